"""Paper-scale cost: attack throughput (batched vs one image at a time), training cost per recipe, mixed precision.

Networks with random weights (no download): ResNet-20 on 32x32x3 (CIFAR-10, 10 classes) and torchvision's
ResNet-50 on 224x224x3 (ImageNet, 1000 classes). On CUDA the defaults are paper-like sizes; on the CPU
(``--device cpu``, or no GPU) they shrink to tiny ones (few images, few steps, ResNet-50 at 64x64) so the same
command finishes in minutes; every line says what it measured. Inputs are uniform random images labelled with
the model's own prediction, so every image is attacked (throughput does not depend on pixel values).

* attack: :func:`smoothgeo.core.attacks.attack` (``--method``, top-k kind, softplus surrogate beta 10), image-steps
  per second for the whole batch at once and for a loop over single images.
* train: seconds per optimisation step (SGD, batch ``--train-batch``, after one untimed step) of the natural,
  madry (PGD, ``--pgd-steps``) and ssr recipes of :mod:`smoothgeo.training.recipes`. SSR's lambda_max costs one
  backward pass per class and image, so ResNet-50's 1000 classes are skipped on the CPU (``--ssr-on-cpu``).
* ``--amp``: the maps (SM and IG) under ``torch.autocast`` in bf16 and fp16 against float32: seconds, the largest
  absolute difference of the normalised maps (each sums to H*W), top-k intersection and Kendall tau-b (exact,
  :mod:`smoothgeo.core.ranks`) with the float32 maps, and the attack's throughput under autocast. Use autocast only
  where top-k / Kendall stay at 1.0 to the precision the study reports.

    python benchmarks/gpu_scale.py                       # CUDA if available, else CPU tiny sizes
    python benchmarks/gpu_scale.py --device cpu --amp --networks resnet20
    python benchmarks/gpu_scale.py --images 64 --steps 10 --train-batch 128 --amp   # on a GPU
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch

from smoothgeo.core.attacks import attack
from smoothgeo.core.attributions import attribute, map_of
from smoothgeo.core.metrics import topk_intersection
from smoothgeo.core.models import build_model
from smoothgeo.core.ranks import kendall_tau_b
from smoothgeo.training.recipes import RECIPES, check_options


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeat: int = 1) -> float:
    _sync(device)
    t0 = time.perf_counter()
    for _ in range(repeat):
        fn()
    _sync(device)
    return (time.perf_counter() - t0) / repeat


def _network(name: str, size: int, device):
    torch.manual_seed(0)
    if name == "resnet20":
        model = build_model("resnet20", num_classes=10)
    else:
        model = build_model("resnet50", pretrained=False)
    return model.to(device), (3, size, size)


def _autocast(device, dtype):
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def _frozen_inputs(model, shape, args, device, seed: int):
    """Eval mode and frozen weights; random images, the model's own predictions as labels, k = 1 % of pixels."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(args.images, *shape, generator=g).to(device)
    with torch.no_grad():
        y = model(x).argmax(1)
    return x, y, max(1, shape[1] * shape[2] // 100)


def bench_attack(model, shape, args, device, dtype=None) -> str:
    x, y, k = _frozen_inputs(model, shape, args, device, seed=0)
    kw = dict(method=args.method, kind="topk", epsilon=8 / 255, step_size=2 / 255, steps=args.steps, k=k,
              beta=10.0, method_options={"steps": args.ig_steps} if args.method == "IG" else None)
    with _autocast(device, dtype):
        attack(model, x[:1], y[:1], **{**kw, "steps": 1})     # warm-up (cuDNN autotune, allocator)
        batched = _timed(lambda: attack(model, x, y, **kw), device)
        single = _timed(lambda: [attack(model, x[i:i + 1], y[i:i + 1], **kw) for i in range(len(x))], device)
    work = args.images * args.steps
    return (f"attack {args.method} {args.images} images x {args.steps} steps: batched {work / batched:8.2f} "
            f"image-steps/s ({batched:.2f} s), one at a time {work / single:8.2f} image-steps/s ({single:.2f} s), "
            f"speed-up {single / batched:.1f}x")


def bench_train(name, model, shape, args, device) -> list[str]:
    classes = 10 if name == "resnet20" else 1000
    options = {"natural": {}, "madry": {"epsilon": 8 / 255, "step_size": 2 / 255, "steps": args.pgd_steps},
               "ssr": {"alpha": 0.3, "scale": 1.0}}
    g = torch.Generator().manual_seed(1)
    x = torch.rand(args.train_batch, *shape, generator=g).to(device)
    y = torch.randint(0, classes, (args.train_batch,), generator=g).to(device)
    lines, base = [], None
    for recipe in args.recipes:
        if recipe == "ssr" and classes > 100 and device.type == "cpu" and not args.ssr_on_cpu:
            lines.append(f"train {recipe:8s} skipped on the CPU: lambda_max needs {classes} backward passes per "
                         "image (--ssr-on-cpu to force)")
            continue
        model.train()
        for p in model.parameters():
            p.requires_grad_(True)
        opt = torch.optim.SGD(model.parameters(), lr=1e-3)
        loss_fn, opts = RECIPES[recipe], check_options(recipe, options[recipe])

        def step():
            opt.zero_grad(set_to_none=True)
            loss, _ = loss_fn(model, x, y, **opts)
            loss.backward()
            opt.step()

        step()
        secs = _timed(step, device, repeat=args.train_steps)
        base = secs if recipe == "natural" else base
        rel = f" ({secs / base:.1f}x natural)" if base else ""
        lines.append(f"train {recipe:8s} batch {args.train_batch}: {secs:.3f} s/step, "
                     f"{args.train_batch / secs:.1f} images/s{rel}")
    model.eval()
    return lines


def bench_amp(model, shape, args, device) -> list[str]:
    x, y, k = _frozen_inputs(model, shape, args, device, seed=2)
    lines = []
    for method, opts in (("SM", {}), ("IG", {"steps": args.ig_steps})):
        def maps():
            return map_of(method, attribute(method, model, x, y, **opts).float(), x)

        ref = maps()                                            # also the warm-up
        ref_secs = _timed(maps, device)
        lines.append(f"amp {method} float32: {ref_secs:.3f} s for {args.images} maps")
        for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
            try:
                with _autocast(device, dtype):
                    m = maps()
                    secs = _timed(maps, device)
            except Exception as exc:  # an op without a low-precision kernel on this device
                lines.append(f"amp {method} {label}: not supported here ({type(exc).__name__}: "
                             f"{str(exc).splitlines()[0][:80]})")
                continue
            diff = (m - ref).abs().max().item()
            top = topk_intersection(ref, m, k).mean().item()
            tau = kendall_tau_b(ref, m)
            lines.append(f"amp {method} {label}: {secs:.3f} s ({ref_secs / secs:.2f}x), max |map diff| {diff:.3g} "
                         f"(maps sum to {shape[1] * shape[2]}), top-{k} agreement {top:.3f}, Kendall tau-b "
                         f"mean {tau.nanmean().item():.4f} min {tau.min().item():.4f}")
    for label, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        try:
            lines.append(f"amp {label} " + bench_attack(model, shape, args, device, dtype))
        except Exception as exc:
            lines.append(f"amp {label} attack: not supported here ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0][:80]})")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="auto", help="auto (cuda if available), cpu, cuda, cuda:1, ...")
    parser.add_argument("--networks", default="resnet20,resnet50")
    parser.add_argument("--recipes", default="natural,madry,ssr")
    parser.add_argument("--method", default="SM", choices=["SM", "IG", "SG", "UG"])
    parser.add_argument("--images", type=int, default=None, help="attacked images (default 32 CUDA / 2 CPU)")
    parser.add_argument("--steps", type=int, default=None, help="attack steps (default 10 CUDA / 2 CPU)")
    parser.add_argument("--ig-steps", type=int, default=None, help="IG steps (default 50 CUDA / 4 CPU)")
    parser.add_argument("--train-batch", type=int, default=None, help="training batch (default 128 CUDA / 4 CPU)")
    parser.add_argument("--train-steps", type=int, default=None, help="timed steps (default 5 CUDA / 1 CPU)")
    parser.add_argument("--pgd-steps", type=int, default=None, help="madry PGD steps (default 7 CUDA / 2 CPU)")
    parser.add_argument("--resnet50-size", type=int, default=None, help="ResNet-50 input size (224 CUDA / 64 CPU)")
    parser.add_argument("--amp", action="store_true", help="also measure bf16/fp16 autocast: time and map changes")
    parser.add_argument("--ssr-on-cpu", action="store_true", help="run SSR on ResNet-50 on the CPU too (slow)")
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args()
    device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto"
                          else args.device)
    gpu = device.type == "cuda"
    for name, big, tiny in (("images", 32, 2), ("steps", 10, 2), ("ig_steps", 50, 4), ("train_batch", 128, 4),
                            ("train_steps", 5, 1), ("pgd_steps", 7, 2), ("resnet50_size", 224, 64)):
        if getattr(args, name) is None:
            setattr(args, name, big if gpu else tiny)
    args.recipes = [r for r in args.recipes.split(",") if r]
    if args.threads:
        torch.set_num_threads(args.threads)
    where = torch.cuda.get_device_name(device) if gpu else f"CPU, {torch.get_num_threads()} threads"
    print(f"device {device} ({where}), torch {torch.__version__}; sizes: {args.images} images, {args.steps} "
          f"attack steps, training batch {args.train_batch}, ResNet-50 at {args.resnet50_size}x{args.resnet50_size}")
    for name in [n for n in args.networks.split(",") if n]:
        size = 32 if name == "resnet20" else args.resnet50_size
        model, shape = _network(name, size, device)
        print(f"== {name} on {shape[0]}x{shape[1]}x{shape[2]}, random weights")
        print("  " + bench_attack(model, shape, args, device), flush=True)
        for line in bench_train(name, model, shape, args, device):
            print("  " + line, flush=True)
        if args.amp:
            for line in bench_amp(model, shape, args, device):
                print("  " + line, flush=True)


if __name__ == "__main__":
    main()
