"""Attack throughput: the batched attack vs the same attack one image at a time.

Prints image-iterations per second (images x steps / wall time) of :func:`smoothgeo.attacks.attack` on a
FashionCNN (random init, or ``--checkpoint`` a state dict), for the whole batch at once and for a Python loop
over single images, on the CPU and, when available, on CUDA. Inputs are uniform random images labelled with the
model's own predictions, so every image is attacked; throughput does not depend on the images' content.

    python benchmarks/attack_throughput.py --images 32 --steps 20 --method SM
"""
from __future__ import annotations

import argparse
import time

import torch

from smoothgeo.attacks import attack
from smoothgeo.checkpoints import load_checkpoint
from smoothgeo.models import FashionCNN


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device) -> float:
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--method", default="SM", choices=["SM", "IG", "SG", "UG"])
    parser.add_argument("--kind", default="topk", choices=["topk", "mass_center", "random"])
    parser.add_argument("--checkpoint", default=None,
                        help="a smoothgeo checkpoint, e.g. data/checkpoints/natural.pt; default: random FashionCNN")
    parser.add_argument("--samples", type=int, default=10, help="IG steps / SG, UG noise samples")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else FashionCNN()
    options = {"IG": {"steps": args.samples}, "SG": {"samples": args.samples},
               "UG": {"samples": args.samples}}.get(args.method, {})
    x_cpu = torch.rand(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
    settings = dict(method=args.method, kind=args.kind, epsilon=0.1, step_size=0.01, steps=args.steps, k=100,
                    beta=10.0, seed=args.seed, method_options=options)

    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"attack={args.kind} method={args.method} images={args.images} steps={args.steps} "
          f"options={options} torch={torch.__version__} cpu_threads={torch.get_num_threads()}")
    print(f"{'device':8s} {'mode':10s} {'seconds':>9s} {'img*it/s':>10s}")
    for device in devices:
        model = model.to(device).eval()
        x = x_cpu.to(device)
        with torch.no_grad():
            y = model(x).argmax(1)
        attack(model, x[:2], y[:2], **{**settings, "steps": 1})  # warm-up (kernels, allocator)
        batched = _timed(lambda: attack(model, x, y, **settings), device)
        single = _timed(lambda: [attack(model, x[i:i + 1], y[i:i + 1], **settings) for i in range(len(x))], device)
        work = args.images * args.steps
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        print(f"{device.type:8s} {'batched':10s} {batched:9.2f} {work / batched:10.1f}")
        print(f"{device.type:8s} {'one-by-one':10s} {single:9.2f} {work / single:10.1f}")
        print(f"{device.type:8s} speed-up of batching: {single / batched:.1f}x  ({name})")


if __name__ == "__main__":
    main()
