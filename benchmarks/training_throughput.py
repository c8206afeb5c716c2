"""Training throughput before and after the speed levers, per recipe, with FLOP rates against the machine's peak.

"Before" is the earlier default: ``fashion_cnn`` in float32. "After" is today's default: ``fashion_small`` with
``precision: auto`` (bfloat16 autocast where the CPU has native bf16 instructions, float32 elsewhere; the line
``precision used`` says which). For natural, SSR (ritz_vectors 3, scale 10) and Madry-7 (eps 0.1) the benchmark
prints, per configuration,

* images per second of training (``--batches`` timed optimisation steps of batch 128 after ``--warmup`` untimed
  ones, the best of ``--repeats`` passes: the machine is shared, the fastest pass is the least disturbed),
* FLOPs per training image (``torch.utils.flop_counter``, one step) and the achieved GFLOP/s as a share of the
  measured matmul peak of the same dtype (the best of a few ``n x n @ n x n`` products on the same threads),
* the speed-up after/before,

and, with ``--accuracy-epochs E``, the clean test accuracy each configuration reaches after E epochs of natural
training on Fashion-MNIST (the equivalence check: the lighter network and bf16 must still converge). The
pipeline's own accuracies are in ``results/training/*.json`` (``--records`` prints their per-recipe mean).

    python benchmarks/training_throughput.py                       # throughput and FLOP rates, about 2 minutes
    python benchmarks/training_throughput.py --accuracy-epochs 2   # plus the accuracy check (a few minutes more)
"""
from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode

try:    # the counting mode without the per-module tracker, whose hooks break SSR's double backward
    from torch.utils.flop_counter import _FlopCounterMode
except ImportError:  # pragma: no cover - older or newer torch
    _FlopCounterMode = None

from smoothgeo.core.device import autocast_dtype, cpu_features, set_threads
from smoothgeo.core.models import build_model
from smoothgeo.training.recipes import RECIPES, check_options, make_optimizer

RECIPE_OPTIONS = {"natural": {}, "ssr": {"alpha": 0.3, "scale": 10.0, "ritz_vectors": 3},
                  "madry": {"epsilon": 0.1, "step_size": 0.025, "steps": 7}}
CONFIGS = {"before": ("fashion_cnn", "float32"), "after": ("fashion_small", "auto")}


def matmul_peak(dtype: torch.dtype, n: int = 1024, repeats: int = 5) -> float:
    """Best GFLOP/s of an ``n x n`` matmul in ``dtype`` on the current threads."""
    a, b = torch.randn(n, n).to(dtype), torch.randn(n, n).to(dtype)
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(4):
            a @ b
        best = min(best, (time.perf_counter() - t0) / 4)
    return 2 * n ** 3 / best / 1e9


def count_flops(fn) -> float:
    """FLOPs of one call of ``fn`` (matmuls and convolutions, forward and backward), NaN if they cannot be counted."""
    counter = FlopCounterMode(display=False)
    try:
        if _FlopCounterMode is not None:
            with _FlopCounterMode(counter):
                fn()
        else:
            with counter:
                fn()
    except RuntimeError:
        return float("nan")
    return float(counter.get_total_flops())


def _step(model, opt, recipe, options, x, y, dtype):
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=dtype == torch.bfloat16):
        loss, _ = RECIPES[recipe](model, x, y, **options)
    opt.zero_grad(set_to_none=True)
    loss.backward()
    opt.step()


def throughput(arch: str, precision: str, recipe: str, *, batches: int, warmup: int, repeats: int,
               batch_size: int) -> dict:
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    model.train()
    opt = make_optimizer("adam", model.parameters(), lr=1e-3)
    dtype = autocast_dtype(precision, "cpu")
    options = check_options(recipe, RECIPE_OPTIONS[recipe])
    x, y = torch.rand(batch_size, 1, 28, 28), torch.randint(0, 10, (batch_size,))
    for _ in range(warmup):
        _step(model, opt, recipe, options, x, y, dtype)
    flops = count_flops(lambda: _step(model, opt, recipe, options, x, y, dtype)) / batch_size
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        for _ in range(batches):
            _step(model, opt, recipe, options, x, y, dtype)
        best = min(best, (time.perf_counter() - t0) / (batches * batch_size))
    return {"arch": arch, "dtype": str(dtype).replace("torch.", ""), "recipe": recipe, "images_per_s": 1 / best,
            "ms_per_image": 1e3 * best, "mflops_per_image": flops / 1e6, "gflops_per_s": flops / best / 1e9,
            "parameters": sum(p.numel() for p in model.parameters())}


def accuracy_after(arch: str, precision: str, epochs: int) -> float:
    """Clean test accuracy after ``epochs`` of natural training (batch 128, Adam, one-cycle 3e-3)."""
    from smoothgeo.data.datasets import load_tensors
    from smoothgeo.training.recipes import lr_at

    x, y = load_tensors("fashion_mnist", "train", root="data/raw")
    xt, yt = load_tensors("fashion_mnist", "test", root="data/raw")
    torch.manual_seed(0)
    model = build_model(arch, num_classes=10)
    opt = make_optimizer("adam", model.parameters(), lr=3e-3)
    dtype = autocast_dtype(precision, "cpu")
    per_epoch = len(y) // 128
    step = 0
    for epoch in range(epochs):
        g = torch.Generator().manual_seed(epoch)
        order = torch.randperm(len(y), generator=g)
        model.train()
        for i in range(per_epoch):
            idx = order[i * 128:(i + 1) * 128]
            for group in opt.param_groups:
                group["lr"] = lr_at(step, epochs * per_epoch, 3e-3, "onecycle")
            _step(model, opt, "natural", {}, x[idx], y[idx], dtype)
            step += 1
    model.eval()
    with torch.no_grad():
        pred = torch.cat([model(xt[i:i + 1000]).argmax(1) for i in range(0, len(yt), 1000)])
    return float((pred == yt).float().mean())


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batches", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1, help="torch threads (the pipeline's stages use 1)")
    parser.add_argument("--recipes", nargs="+", default=list(RECIPE_OPTIONS), choices=list(RECIPE_OPTIONS))
    parser.add_argument("--accuracy-epochs", type=int, default=0)
    parser.add_argument("--records", default="results/training", help="print the pipeline's accuracies from here")
    parser.add_argument("--json", default=None, help="also write the figures to this JSON file")
    args = parser.parse_args(argv)
    set_threads(args.threads)
    flags = sorted(cpu_features())
    used = autocast_dtype("auto", "cpu")
    print(f"threads {args.threads}; CPU bf16 flags: {', '.join(flags) or 'none'}; "
          f"precision used by 'auto': {str(used).replace('torch.', '')}")
    peaks = {"float32": matmul_peak(torch.float32), "bfloat16": matmul_peak(torch.bfloat16)}
    print(f"matmul peak: float32 {peaks['float32']:.0f} GFLOP/s, bfloat16 {peaks['bfloat16']:.0f} GFLOP/s "
          f"(1024 x 1024, best of 5)")
    rows = []
    header = f"{'recipe':8} {'config':7} {'arch':14} {'dtype':9} {'params':>8} {'ms/img':>7} {'img/s':>7} " \
             f"{'MFLOP/img':>9} {'GFLOP/s':>8} {'of peak':>7}"
    print(header)
    for recipe in args.recipes:
        for config, (arch, precision) in CONFIGS.items():
            r = throughput(arch, precision, recipe, batches=args.batches, warmup=args.warmup, repeats=args.repeats,
                           batch_size=args.batch_size)
            r.update(config=config, of_peak=r["gflops_per_s"] / peaks[r["dtype"]])
            rows.append(r)
            print(f"{recipe:8} {config:7} {arch:14} {r['dtype']:9} {r['parameters']:8d} {r['ms_per_image']:7.3f} "
                  f"{r['images_per_s']:7.0f} {r['mflops_per_image']:9.2f} {r['gflops_per_s']:8.1f} "
                  f"{100 * r['of_peak']:6.1f}%")
        before, after = rows[-2], rows[-1]
        print(f"{recipe:8} speed-up after/before: {before['ms_per_image'] / after['ms_per_image']:.2f}x")
    natural = {r["config"]: r["ms_per_image"] for r in rows if r["recipe"] == "natural"}
    for r in rows:
        if r["recipe"] != "natural" and r["config"] in natural:
            r["cost_vs_natural"] = r["ms_per_image"] / natural[r["config"]]
    for config in CONFIGS:
        costs = ", ".join(f"{r['recipe']} {r['cost_vs_natural']:.2f}x" for r in rows
                          if r["config"] == config and "cost_vs_natural" in r)
        if costs:
            print(f"cost per image relative to natural ({config}): {costs}")
    accuracy = {}
    if args.accuracy_epochs:
        for config, (arch, precision) in CONFIGS.items():
            accuracy[config] = accuracy_after(arch, precision, args.accuracy_epochs)
            print(f"natural test accuracy after {args.accuracy_epochs} epoch(s), {config} ({arch}, {precision}): "
                  f"{accuracy[config]:.4f}")
    records = Path(args.records)
    if records.is_dir():
        by_recipe: dict[str, list[float]] = {}
        for path in sorted(records.glob("*.json")):
            rec = json.loads(path.read_text())
            if rec.get("init") is None and rec.get("test_accuracy") is not None and "early" not in path.stem:
                by_recipe.setdefault(rec.get("recipe"), []).append(float(rec["test_accuracy"]))
        for recipe, accs in by_recipe.items():
            print(f"pipeline records ({records}): {recipe} test accuracy mean {statistics.mean(accs):.4f} over "
                  f"{len(accs)} model(s), min {min(accs):.4f}")
    if args.json:
        Path(args.json).write_text(json.dumps({"peaks": peaks, "rows": rows, "accuracy": accuracy}, indent=1))


if __name__ == "__main__":
    main()
