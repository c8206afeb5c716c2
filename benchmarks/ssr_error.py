"""Error of SSR's merged-class lambda_max (``top_classes = m``) against the exact C x C lambda_max.

For every checkpoint given, over the first ``--images`` Fashion-MNIST test images (model in eval mode), the
relative error ``(exact - approx) / exact`` per image for each ``m`` in ``--top-classes``: median, 90th
percentile and max, plus the mean lambda_max both ways (the quantity the penalty averages) and the share of
images where the merged class holds more than 1e-3 of the probability mass. The merged route can only
underestimate (``smoothgeo.geometry.lambda_max_penalty`` states the bound), so the errors are >= 0 up to
rounding. Images whose exact lambda_max is below ``--floor`` (a near one-hot ``p``; the penalty is ~0 there)
are left out of the relative figures and counted.

    python benchmarks/ssr_error.py CKPT [CKPT ...] [--images 500] [--top-classes 1 2 3 4]

Train the checkpoints first, e.g. with ``python -m smoothgeo.train`` on a small params file (a natural model
and an SSR model, alpha 0.3, scale 10, from scratch).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from smoothgeo.checkpoints import load_checkpoint
from smoothgeo.data import load_tensors
from smoothgeo.geometry import evaluating, lambda_max_penalty


def lambda_max(model, x, top_classes: int, chunk: int) -> torch.Tensor:
    """lambda_max per image by :func:`lambda_max_penalty` (0 = exact), detached, in chunks."""
    out = []
    with evaluating(model):
        for s in range(0, x.shape[0], chunk):
            out.append(lambda_max_penalty(model, x[s:s + chunk], top_classes=top_classes)[1].detach())
    return torch.cat(out).double()


def rest_mass(model, x, m: int) -> torch.Tensor:
    with torch.no_grad(), evaluating(model):
        p = model(x).double().softmax(1)
    return 1 - p.sort(1, descending=True).values[:, :m].sum(1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--top-classes", type=int, nargs="+", default=[1, 2, 3, 4])
    parser.add_argument("--floor", type=float, default=1e-6, help="leave out images with exact lambda_max below")
    parser.add_argument("--chunk", type=int, default=125)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    x, _ = load_tensors("fashion_mnist", "test", limit=args.images, download=False)
    print(f"{x.shape[0]} Fashion-MNIST test images (the first {args.images}); relative error (exact - merged) / "
          f"exact in %, images with exact lambda_max < {args.floor:g} left out\n")
    print(f"{'model':14s} {'m':>2s} {'median %':>9s} {'p90 %':>8s} {'max %':>8s} {'min %':>8s} "
          f"{'mean lam exact':>15s} {'mean lam m':>11s} {'q>1e-3':>7s} {'n':>4s}")
    for path in args.checkpoints:
        model, _ = load_checkpoint(path)
        name = Path(path).stem
        exact = lambda_max(model, x, 0, args.chunk)
        keep = exact >= args.floor
        for m in args.top_classes:
            approx = lambda_max(model, x, m, args.chunk)
            rel = ((exact - approx) / exact)[keep] * 100
            q = rest_mass(model, x, m)
            print(f"{name:14s} {m:2d} {rel.median().item():9.3f} {rel.quantile(0.9).item():8.3f} "
                  f"{rel.max().item():8.3f} {rel.min().item():8.1e} {exact.mean().item():15.5g} "
                  f"{approx.mean().item():11.5g} {(q > 1e-3).double().mean().item():7.2f} {int(keep.sum()):4d}")


if __name__ == "__main__":
    main()
