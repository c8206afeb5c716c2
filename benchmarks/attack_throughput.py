"""Attack throughput: FLOP rate of one attack iteration against the machine's matmul peak, and batching.

For each attacked method (default SM and IG) on a FashionCNN (random init, or ``--checkpoint``) with 1x28x28
inputs, prints

* the FLOPs of one attack iteration (attack direction through the softplus surrogate + scoring the proposal on
  the original model), counted with ``torch.utils.flop_counter`` as the difference between an attack with one
  step and one with zero steps, so the per-attack set-up (clean map, Kendall of the result) is excluded;
* the wall time of one iteration, (t(steps) - t(0)) / steps, as iterations per second of the whole batch and
  image-iterations per second, and the achieved GFLOP/s as a fraction of the measured float32 matmul peak
  (the best of a few ``n x n @ n x n`` products with the same thread count, measured before each method too);
* the whole attack (set-up included) batched vs a Python loop over single images, as before.

Inputs are uniform random images labelled with the model's own predictions, so every image is attacked;
throughput does not depend on the images' content. IG uses ``--samples`` path points for scores and
``--direction-samples`` for the attack direction (params.yaml's default 20 and 5).

    python benchmarks/attack_throughput.py --images 32 --steps 10 --methods SM IG
"""
from __future__ import annotations

import argparse
import time

import torch
from torch.utils.flop_counter import FlopCounterMode

from smoothgeo.core.attacks import attack
from smoothgeo.store.checkpoints import load_checkpoint
from smoothgeo.core.models import FashionCNN


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed(fn, device, repeats: int = 1) -> float:
    """Best wall time of ``repeats`` calls (the machine is shared: the minimum is the least disturbed)."""
    best = float("inf")
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return best


class _NoModuleTracker:
    """Stands in for FlopCounterMode's module tracker, whose backward hooks fail under ``autograd.grad`` with
    double backpropagation ("A leaf node was passed to _will_engine_execute_node"); we only need the total."""

    parents = {"Global"}

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False


def count_flops(fn) -> int:
    """Total FLOPs (matmuls and convolutions, forward and backward) of ``fn()``, by torch.utils.flop_counter."""
    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _NoModuleTracker()
    with counter:
        fn()
    return counter.get_total_flops()


def matmul_peak(device: torch.device, n: int = 2048, repeats: int = 5) -> float:
    """Measured float32 matmul rate in FLOP/s: the best of ``repeats`` ``(n, n) @ (n, n)`` products."""
    a = torch.randn(n, n, device=device)
    b = torch.randn(n, n, device=device)
    a @ b  # warm-up
    return 2 * n ** 3 / _timed(lambda: a @ b, device, repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10, help="iterations of the timed attacks")
    parser.add_argument("--methods", nargs="+", default=["SM", "IG"], choices=["SM", "IG", "SG", "UG"])
    parser.add_argument("--kind", default="topk", choices=["topk", "mass_center", "random"])
    parser.add_argument("--checkpoint", default=None,
                        help="a smoothgeo checkpoint, e.g. data/checkpoints/natural.pt; default: random FashionCNN")
    parser.add_argument("--samples", type=int, default=20, help="IG steps / SG, UG noise samples for the scores")
    parser.add_argument("--direction-samples", type=int, default=5, help="the same for the attack direction")
    parser.add_argument("--repeats", type=int, default=2, help="timings keep the best of this many runs")
    parser.add_argument("--matmul-size", type=int, default=2048)
    parser.add_argument("--no-single", action="store_true", help="skip the one-image-at-a-time comparison")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    torch.manual_seed(args.seed)
    model = load_checkpoint(args.checkpoint)[0] if args.checkpoint else FashionCNN()
    x_cpu = torch.rand(args.images, 1, 28, 28, generator=torch.Generator().manual_seed(args.seed))
    devices = [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])
    print(f"attack={args.kind} images={args.images} steps={args.steps} samples={args.samples}/"
          f"{args.direction_samples} (scores/direction) torch={torch.__version__} "
          f"cpu_threads={torch.get_num_threads()}")
    for device in devices:
        name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
        peak = matmul_peak(device, args.matmul_size)
        print(f"\n{device.type} ({name}): float32 matmul peak {peak / 1e9:.1f} GFLOP/s "
              f"({args.matmul_size}^3, best of 5)")
        print(f"{'method':6s} {'MFLOP/img/it':>12s} {'s/it':>8s} {'it/s':>7s} {'img*it/s':>9s} {'GFLOP/s':>8s} "
              f"{'of peak':>7s} {'peak':>6s} {'batched':>8s} {'1-by-1':>7s} {'speed-up':>8s}")
        model = model.to(device).eval()
        x = x_cpu.to(device)
        with torch.no_grad():
            y = model(x).argmax(1)
        for method in args.methods:
            options = {"IG": {"steps": args.samples}, "SG": {"samples": args.samples},
                       "UG": {"samples": args.samples}}.get(method, {})
            direction = {"IG": {"steps": args.direction_samples}, "SG": {"samples": args.direction_samples},
                         "UG": {"samples": args.direction_samples}}.get(method, {})
            settings = dict(method=method, kind=args.kind, epsilon=0.1, step_size=0.01, k=100, beta=10.0,
                            seed=args.seed, method_options=options, direction_options=direction)

            def run(steps, xs=x, ys=y):
                return attack(model, xs, ys, steps=steps, **settings)

            run(1, x[:2], y[:2])  # warm-up (kernels, allocator)
            flops = count_flops(lambda: run(1)) - count_flops(lambda: run(0))
            t_setup = _timed(lambda: run(0), device, args.repeats)
            t_full = _timed(lambda: run(args.steps), device, args.repeats)
            per_it = max(t_full - t_setup, 1e-9) / max(args.steps, 1)
            peak = max(peak, matmul_peak(device, args.matmul_size))  # the shared machine: keep the best seen
            rate = flops / per_it
            work = args.images * args.steps
            line = (f"{method:6s} {flops / args.images / 1e6:12.1f} {per_it:8.4f} {1 / per_it:7.2f} "
                    f"{args.images / per_it:9.1f} {rate / 1e9:8.1f} {rate / peak:7.0%} {peak / 1e9:6.1f} "
                    f"{work / t_full:8.1f}")
            if not args.no_single:
                single = _timed(lambda: [run(args.steps, x[i:i + 1], y[i:i + 1]) for i in range(len(x))], device)
                line += f" {work / single:7.1f} {single / t_full:7.1f}x"
            print(line, flush=True)
    print("\nMFLOP/img/it, s/it, it/s, img*it/s, GFLOP/s: one iteration without the per-attack set-up; peak: "
          "the best matmul GFLOP/s seen so far; batched, 1-by-1: image-iterations per second of whole attacks "
          "(set-up included).")


if __name__ == "__main__":
    main()
