"""Error of SSR's fast lambda_max routes against the exact C x C lambda_max, on trained checkpoints.

Routes of ``smoothgeo.core.hessian.lambda_max_penalty``: ``top-m`` (``top_classes = m``, merged-class route) and
``ritz-k`` (``ritz_vectors = k``, Ritz route). For every checkpoint, over the first ``--images`` Fashion-MNIST
test images (model in eval mode), the relative error ``(exact - fast) / exact`` per image: median, 90th
percentile and max, plus the mean lambda_max both ways (what the penalty averages; "mean err" is their
relative gap) and, for top-m, the share of images where the merged class holds more than 1e-3 of the mass.
Both routes can only underestimate, so the errors are >= 0 up to float32 rounding. Images whose exact
lambda_max is below ``--floor`` (near one-hot ``p``; the penalty is ~0 there) are left out and counted.

    python benchmarks/ssr_error.py CKPT [CKPT ...] [--images 500] [--top-classes 2 3 4] [--ritz 2 3 4]

Train the checkpoints first, e.g. with ``python -m smoothgeo.pipeline.train`` on a small params file (a natural model
and an SSR model, alpha 0.3, scale 10, from scratch).
"""
from __future__ import annotations

import argparse
from pathlib import Path

import torch

from smoothgeo.store.checkpoints import load_checkpoint
from smoothgeo.data.datasets import load_tensors
from smoothgeo.core.geometry import evaluating
from smoothgeo.core.hessian import lambda_max_penalty


def lambda_max(model, x, chunk: int, **route) -> torch.Tensor:
    """lambda_max per image by :func:`lambda_max_penalty` (no ``route``: exact), detached, in chunks."""
    out = []
    with evaluating(model):
        for s in range(0, x.shape[0], chunk):
            out.append(lambda_max_penalty(model, x[s:s + chunk], **route)[1].detach())
    return torch.cat(out).double()


def rest_mass(model, x, m: int) -> torch.Tensor:
    with torch.no_grad(), evaluating(model):
        p = model(x).double().softmax(1)
    return 1 - p.sort(1, descending=True).values[:, :m].sum(1)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("checkpoints", nargs="+")
    parser.add_argument("--images", type=int, default=500)
    parser.add_argument("--top-classes", type=int, nargs="*", default=[2, 3, 4])
    parser.add_argument("--ritz", type=int, nargs="*", default=[2, 3, 4])
    parser.add_argument("--floor", type=float, default=1e-6, help="leave out images with exact lambda_max below")
    parser.add_argument("--chunk", type=int, default=125)
    parser.add_argument("--threads", type=int, default=None)
    args = parser.parse_args(argv)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    x, _ = load_tensors("fashion_mnist", "test", limit=args.images, download=False)
    print(f"{x.shape[0]} Fashion-MNIST test images (the first {args.images}); relative error (exact - fast) / "
          f"exact in %, images with exact lambda_max < {args.floor:g} left out\n")
    print(f"{'model':14s} {'route':8s} {'median %':>9s} {'p90 %':>8s} {'max %':>8s} {'min %':>9s} "
          f"{'mean lam exact':>15s} {'mean lam':>9s} {'mean err %':>10s} {'q>1e-3':>7s} {'n':>4s}")
    for path in args.checkpoints:
        model, _ = load_checkpoint(path)
        name = Path(path).stem
        exact = lambda_max(model, x, args.chunk)
        keep = exact >= args.floor
        routes = [(f"top-{m}", {"top_classes": m}, m) for m in args.top_classes]
        routes += [(f"ritz-{k}", {"ritz_vectors": k}, None) for k in args.ritz]
        for label, route, m in routes:
            approx = lambda_max(model, x, args.chunk, **route)
            rel = ((exact - approx) / exact)[keep] * 100
            mean_err = (exact[keep].mean() - approx[keep].mean()) / exact[keep].mean() * 100
            q = f"{(rest_mass(model, x, m) > 1e-3).double().mean().item():7.2f}" if m else f"{'':7s}"
            print(f"{name:14s} {label:8s} {rel.median().item():9.3f} {rel.quantile(0.9).item():8.3f} "
                  f"{rel.max().item():8.3f} {rel.min().item():9.1e} {exact[keep].mean().item():15.5g} "
                  f"{approx[keep].mean().item():9.5g} {mean_err.item():10.3f} {q} {int(keep.sum()):4d}")


if __name__ == "__main__":
    main()
