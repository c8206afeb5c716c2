"""Seconds per training epoch of every recipe, relative to natural training, measured in one run.

Default protocol: FashionCNN on Fashion-MNIST, batch 128 (469 batches per epoch of 60,000 images), Adam.
Recipe options come from params.yaml (the first train entry of each recipe) when it exists, else the built-in
defaults below. ``--batches N`` times N optimisation steps per recipe (after ``--warmup`` untimed ones) and
extrapolates to a full epoch; the output says so. SSR runs twice or more: ``ssr`` with the exact lambda_max
(``top_classes=0``), ``ssr top-m`` with the merged-class route for each m of ``--ssr-top-classes`` and ``ssr ritz-k``
with the Ritz route for each k of ``--ssr-ritz``; the last lines give each SSR variant's cost relative to Madry
and to natural training (errors of the fast routes: ``benchmarks/ssr_error.py``).

    python benchmarks/training_cost.py --batches 20
    python benchmarks/training_cost.py --recipes natural madry ssr --ssr-top-classes 2 3 --ssr-ritz 2 3
    python benchmarks/training_cost.py --batches 5 --jacobian   # also compare ways to differentiate SSR's lambda_max
"""
from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from smoothgeo.core.hessian import ce_hessian_lambda_max, lambda_max_penalty
from smoothgeo.core.models import FashionCNN
from smoothgeo.core.device import resolve_device
from smoothgeo.pipeline.train import GENERIC_KEYS
from smoothgeo.training.recipes import RECIPES, check_options

DEFAULTS = {  # the lead's params.yaml protocol
    "natural": {}, "weight_decay": {"weight_decay": 5e-4}, "ssr": {"alpha": 0.3, "scale": 1.0},
    "madry": {"epsilon": 0.1, "step_size": 0.02, "steps": 7},
    "ig_norm": {"epsilon": 0.1, "lam": 1.0, "ig_steps": 10, "steps": 3, "step_size": 0.05},
}
TRAIN_SIZE = 60_000


def recipe_options(params_path: str | None) -> dict[str, dict]:
    options = {k: dict(v) for k, v in DEFAULTS.items()}
    if params_path and Path(params_path).exists():
        from smoothgeo.store.atomic import load_params

        train = load_params(params_path).get("train") or {}
        seen = set()
        for group in ("scratch", "finetune"):
            for entry in (train.get(group) or {}).values():
                recipe = (entry or {}).get("recipe")
                if recipe in RECIPES and recipe not in seen:
                    options[recipe] = {k: v for k, v in entry.items() if k not in GENERIC_KEYS}
                    seen.add(recipe)
    return {k: check_options(k, v) for k, v in options.items()}


def batches_of(n: int, batch_size: int, device) -> tuple[list, str]:
    try:
        from smoothgeo.data.datasets import load_tensors

        x, y = load_tensors("fashion_mnist", "train", limit=n * batch_size, seed=0, download=False)
        source = f"Fashion-MNIST ({x.shape[0]} training images)"
    except Exception as exc:  # no data here: timing does not depend on pixel values
        g = torch.Generator().manual_seed(0)
        x, y = torch.rand(n * batch_size, 1, 28, 28, generator=g), torch.randint(0, 10, (n * batch_size,), generator=g)
        source = f"synthetic uniform images (Fashion-MNIST not available: {str(exc).splitlines()[0][:80]})"
    x, y = x.to(device), y.to(device)
    return [(x[i:i + batch_size], y[i:i + batch_size]) for i in range(0, x.shape[0], batch_size)], source


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def variants(recipes: list[str], options: dict[str, dict], ssr_top_classes: list[int],
             ssr_ritz: list[int] = ()) -> dict[str, tuple]:
    """Timed label -> (recipe, options): ``ssr`` exact, ``ssr top-m`` per m, ``ssr ritz-k`` per k."""
    out = {}
    for recipe in recipes:
        if recipe == "ssr":
            out["ssr"] = ("ssr", {**options["ssr"], "top_classes": 0, "ritz_vectors": 0})
            for m in ssr_top_classes:
                out[f"ssr top-{m}"] = ("ssr", {**options["ssr"], "top_classes": m, "ritz_vectors": 0})
            for k in ssr_ritz:
                out[f"ssr ritz-{k}"] = ("ssr", {**options["ssr"], "top_classes": 0, "ritz_vectors": k})
        else:
            out[recipe] = (recipe, options[recipe])
    return out


def make_stepper(recipe: str, options: dict, device):
    """One optimisation step of ``recipe`` on its own FashionCNN + Adam."""
    torch.manual_seed(0)
    model = FashionCNN().to(device).train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    loss_fn = RECIPES[recipe]

    def step(x, y):
        loss, _ = loss_fn(model, x, y, **options)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    return step


def time_recipes(runs: dict[str, tuple], batches: list, warmup: int, rounds: int, device) -> dict[str, float]:
    """Mean seconds per batch of each ``label -> (recipe, options)``. The timed batches are split into
    ``rounds`` and the recipes take turns round by round, so a change in machine load during the run hits every
    recipe alike."""
    steppers = {label: make_stepper(r, o, device) for label, (r, o) in runs.items()}
    for step in steppers.values():
        for x, y in batches[:warmup]:
            step(x, y)
    timed = batches[warmup:]
    bounds = [round(i * len(timed) / rounds) for i in range(rounds + 1)]
    total = dict.fromkeys(steppers, 0.0)
    for a, b in zip(bounds[:-1], bounds[1:]):
        for recipe, step in steppers.items():
            _sync(device)
            start = time.perf_counter()
            for x, y in timed[a:b]:
                step(x, y)
            _sync(device)
            total[recipe] += time.perf_counter() - start
    return {r: t / len(timed) for r, t in total.items()}


def jacobian_comparison(batch, device, repeats: int = 3) -> None:
    """Time one SSR optimisation step with four ways of making lambda_max differentiable w.r.t. the weights."""
    from torch.func import functional_call, jacrev, vmap

    x, y = batch
    model = FashionCNN().to(device).train()
    params = list(model.parameters())

    def loop(z_in):
        z_in = z_in.requires_grad_(True)
        z = model(z_in)
        rows = [torch.autograd.grad(z[:, c].sum(), z_in, create_graph=True)[0] for c in range(z.shape[1])]
        return z, ce_hessian_lambda_max(z, torch.stack(rows, 1))

    def batched(z_in):
        z_in = z_in.requires_grad_(True)
        z = model(z_in)
        eye = torch.eye(z.shape[1], device=z.device).unsqueeze(1).expand(-1, z.shape[0], -1)
        (g,) = torch.autograd.grad(z, z_in, grad_outputs=eye, is_grads_batched=True, create_graph=True)
        return z, ce_hessian_lambda_max(z, g.transpose(0, 1))

    named = dict(model.named_parameters())

    def func(z_in):
        jac = vmap(jacrev(lambda xi: functional_call(model, named, (xi.unsqueeze(0),)).squeeze(0)))(z_in)
        z = model(z_in)
        return z, ce_hessian_lambda_max(z, jac)

    def used(z_in):
        return lambda_max_penalty(model, z_in)

    print("\nSSR: one optimisation step (forward, lambda_max, weight gradient of 0.7 CE + 0.3 lambda_max)")
    for name, fn in (("eigenvector VJP, 1 create_graph pass (used)", used),
                     ("create_graph Jacobian, C passes + eigvalsh", loop),
                     ("create_graph Jacobian, is_grads_batched", batched),
                     ("torch.func vmap(jacrev) + eigvalsh", func)):
        times = []
        for _ in range(repeats + 1):
            _sync(device)
            t = time.perf_counter()
            z, lam = fn(x.clone())
            loss = 0.7 * F.cross_entropy(z, y) + 0.3 * lam.mean()
            torch.autograd.grad(loss, params)
            _sync(device)
            times.append(time.perf_counter() - t)
        print(f"  {name:46s} {min(times[1:]):7.3f} s (best of {repeats} after one warm-up)")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--batches", type=int, default=20, help="timed batches per recipe (default 20)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed batches first (default 2)")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--recipes", nargs="*", default=list(DEFAULTS), choices=sorted(RECIPES))
    parser.add_argument("--params", default="params.yaml", help="read recipe options from here if it exists")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=None,
                        help="recipes take turns in this many rounds (default min(batches, 5))")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    parser.add_argument("--ssr-top-classes", type=int, nargs="*", default=[3],
                        help="also time SSR with these top_classes (merged-class route; default 3)")
    parser.add_argument("--ssr-ritz", type=int, nargs="*", default=[2, 3],
                        help="also time SSR with these ritz_vectors (Ritz route; default 2 3)")
    parser.add_argument("--jacobian", action="store_true", help="also compare ways to differentiate SSR's lambda_max")
    args = parser.parse_args(argv)
    if args.batches < 1 or args.warmup < 0:
        parser.error("--batches must be >= 1 and --warmup >= 0")
    rounds = min(args.batches, 5) if args.rounds is None else max(1, min(args.rounds, args.batches))
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    options = recipe_options(args.params)
    batches, source = batches_of(args.batches + args.warmup, args.batch_size, device)
    per_epoch = math.ceil(TRAIN_SIZE / args.batch_size)
    print(f"device {device}, torch {torch.__version__}, {torch.get_num_threads()} CPU threads; data: {source}")
    print(f"FashionCNN, batch {args.batch_size}, Adam; {args.batches} timed batches per recipe after "
          f"{args.warmup} warm-up, recipes taking turns in {rounds} rounds; epoch figures are EXTRAPOLATED to {per_epoch} batches (60,000 images)\n")
    runs = variants(args.recipes, options, args.ssr_top_classes, args.ssr_ritz)
    results = time_recipes(runs, batches, args.warmup, rounds, device)
    base = results.get("natural")
    print(f"{'recipe':13s} {'s/batch':>9s} {'s/epoch (extrap.)':>18s} {'x natural':>10s}  options")
    for label, sec in results.items():
        ratio = f"{sec / base:10.2f}" if base else f"{'n/a':>10s}"
        opts = ", ".join(f"{k}={v}" for k, v in runs[label][1].items())
        print(f"{label:13s} {sec:9.4f} {sec * per_epoch:18.1f} {ratio}  {opts}")
    madry = results.get("madry")
    if madry is not None:
        madry_steps = runs["madry"][1]["steps"]
    for label, sec in results.items():
        if runs[label][0] == "ssr":
            vs_madry = f"{label} / madry-{madry_steps} = {sec / madry:.2f}" if madry else "no madry timed"
            vs_nat = f"{label} / natural = {sec / base:.2f}" if base else "no natural timed"
            print(f"{vs_madry};  {vs_nat}")
    if args.jacobian:
        jacobian_comparison(batches[0], device)


if __name__ == "__main__":
    main()
