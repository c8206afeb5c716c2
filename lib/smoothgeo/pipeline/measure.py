"""Measure stage: per-image geometry of one model, computed once and read by every notebook and the claims.

    python -m smoothgeo.pipeline.measure --params params.yaml --model NAME \\
        [--checkpoints data/checkpoints] [--attacks data/attacks] [--out results/measures] \\
        [--timings results/timings] [--device auto]

Writes ``<explanations>/<NAME>.csv.gz`` (faithfulness and stability metrics per image and attribution method,
:mod:`smoothgeo.pipeline.explain`), ``<out>/<NAME>.csv.gz`` (deterministic gzip: no timestamp, no file name in the header) with one row per
evaluation image and ``<timings>/measure-<NAME>.json`` (wall seconds, peak RSS from ``resource.getrusage``).
``NAME`` is a checkpoint ``<checkpoints>/<NAME>.pt`` (e.g. ``natural-s0``) or ``<base>+softplus<beta>`` (the
base checkpoint evaluated with Softplus(beta), no retraining). Images: ``experiments.eval_images(params['data'],
n_images, seed=params['seed'])``, so ``image`` is the same index into the same set as in the attack records
(``n_images`` must equal the attack stage's image count; a record index beyond it is an error).

The ``measures`` section of params.yaml (every key optional; defaults shown)::

    measures:
      n_images: 100                 # evaluation images (the attack stage's count)
      batch_size: 50                # images per pass (memory)
      hessian_method: auto          # geometry.hessian_max_eig: auto | exact | power
      power_iters: 100              # most iterations of the power route
      jacobian: true                # false: skip the full C x d logit Jacobian (C backward passes per image,
                                    # N x C x d doubles: 2.4 GB for 2 ImageNet images); the Jacobian-only
                                    # columns relative_curvature and lambda_max_fixed_scale are then NaN, the
                                    # gradient norms take 3 backward passes, and lambda_max the power route
      logit_scale: 5.0              # s of lambda_max_fixed_scale (geometry.logit_geometry)
      convention: grad_times_input  # map convention of the map-Lipschitz ratio and the bound test
      lipschitz:                    # lipschitz.lipschitz_measures; own seed, independent of the attacks
        epsilon: 0.1
        samples: 8                  # random neighbours per image
        adversarial_samples: 2      # of those, how many start a PGD climb (cost ~ samples x steps)
        steps: 10                   # PGD steps of the adversarial neighbours
        step_size: null             # null = epsilon / 4
        beta: 10.0                  # softplus surrogate for the adversarial neighbours of ReLU nets
        seed: 1001
      bound_setting: null           # attack-record setting id for the bound test, e.g. the SM top-k attack at
                                    # the default epsilon; null = no bound test
      bound_lipschitz: matched      # which estimate predicts the change: random | adversarial (both in the
                                    # L-inf ball of lipschitz.epsilon) | matched (random sign directions at each
                                    # image's own attack ||delta||, core.lipschitz.lipschitz_at_radius)
      k: 100                        # top-k of the bound test's top-k change (the attacks' k)

Columns: model, image, label, prediction, correct, clean_conf, logit_margin, logit_norm, lambda_max,
grad_logit_norm, grad_loss_norm, margin_grad_norm, relative_curvature, lambda_max_fixed_scale,
lambda_max_over_grad_logit2, lambda_max_over_grad_loss2, lipschitz_{random,adversarial}{,_relative,_map} (the
adversarial ones: the larger of the random estimate and ``adversarial_samples`` PGD climbs), and
``robust_eps<eps>`` (the prediction survives L-inf PGD on the cross-entropy, ``measures.robust``), and
with a bound setting whose record exists: bound_setting, bound_delta_norm, bound_linf, bound_grad_change,
bound_predicted_grad_change, bound_within_bound, bound_relative_grad_change, bound_map_change,
bound_predicted_map_change, bound_map_within_bound (NaN for images the record lacks or left unperturbed). Definitions:
:mod:`smoothgeo.core.geometry`.
"""
from __future__ import annotations

import argparse
import gzip
import re
import resource
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd
import torch

__all__ = ["MEASURE_DEFAULTS", "measure_config", "load_model", "measure", "gradient_geometry", "write_csv_gz", "main"]

MEASURE_DEFAULTS = {
    "n_images": 100, "batch_size": 50, "hessian_method": "auto", "power_iters": 100, "jacobian": True,
    "logit_scale": 5.0,
    "convention": "grad_times_input",
    "lipschitz": {"epsilon": 0.1, "samples": 8, "adversarial_samples": 2, "steps": 10, "step_size": None,
                  "beta": 10.0, "seed": 1001},
    "bound_setting": None, "bound_lipschitz": "adversarial", "k": 100,
    "robust": {"epsilons": [0.1, 0.2], "steps": 20, "restarts": 1, "seed": 1003},
    "explain": {},
}


def measure_config(params: dict) -> dict:
    """The ``measures`` section merged over :data:`MEASURE_DEFAULTS` and checked (one-line ValueErrors)."""
    section = params.get("measures") or {}
    if not isinstance(section, dict):
        raise ValueError(f"params 'measures' must be a mapping, got {type(section).__name__}")
    unknown = sorted(set(section) - set(MEASURE_DEFAULTS))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in params 'measures'; allowed: {sorted(MEASURE_DEFAULTS)}")
    lip_in = section.get("lipschitz") or {}
    unknown = sorted(set(lip_in) - set(MEASURE_DEFAULTS["lipschitz"]))
    if unknown:
        raise ValueError(f"unknown key(s) {unknown} in params 'measures.lipschitz'; allowed: "
                         f"{sorted(MEASURE_DEFAULTS['lipschitz'])}")
    cfg = {**MEASURE_DEFAULTS, **section, "lipschitz": {**MEASURE_DEFAULTS["lipschitz"], **lip_in}}
    lip = cfg["lipschitz"]
    from smoothgeo.pipeline.explain import explain_config

    cfg["explain"] = explain_config(section.get("explain"))
    rob = section.get("robust") or {}
    if not isinstance(rob, dict) or sorted(set(rob) - set(MEASURE_DEFAULTS["robust"])):
        raise ValueError(f"params 'measures.robust' must be a mapping with keys among "
                         f"{sorted(MEASURE_DEFAULTS['robust'])}, got {rob!r}")
    cfg["robust"] = rob = {**MEASURE_DEFAULTS["robust"], **rob}
    eps = rob["epsilons"]
    if not isinstance(eps, list) or any(isinstance(e, bool) or not isinstance(e, (int, float)) or not 0 < e <= 1
                                        for e in eps):
        raise ValueError(f"params 'measures.robust.epsilons' must be a list of L-inf radii in (0, 1], got {eps!r}")

    def positive_int(name, v):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"params 'measures.{name}' must be an integer >= 1, got {v!r}")

    positive_int("n_images", cfg["n_images"])
    positive_int("batch_size", cfg["batch_size"])
    positive_int("power_iters", cfg["power_iters"])
    if cfg["jacobian"] not in (True, False):
        raise ValueError(f"params 'measures.jacobian' must be true or false, got {cfg['jacobian']!r}")
    if not cfg["jacobian"] and cfg["hessian_method"] == "exact":
        raise ValueError("params 'measures.hessian_method: exact' needs the full logit Jacobian, but "
                         "'measures.jacobian' is false; use hessian_method auto or power (the power route)")
    positive_int("lipschitz.samples", lip["samples"])
    positive_int("lipschitz.adversarial_samples", lip["adversarial_samples"])
    if isinstance(lip["steps"], bool) or not isinstance(lip["steps"], int) or lip["steps"] < 0:
        raise ValueError(f"params 'measures.lipschitz.steps' must be an integer >= 0, got {lip['steps']!r}")
    for name, v in (("lipschitz.epsilon", lip["epsilon"]), ("lipschitz.beta", lip["beta"]),
                    ("logit_scale", cfg["logit_scale"])):
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not v > 0:
            raise ValueError(f"params 'measures.{name}' must be a number > 0, got {v!r}")
    if lip["step_size"] is not None and not (isinstance(lip["step_size"], (int, float)) and lip["step_size"] > 0):
        raise ValueError(f"params 'measures.lipschitz.step_size' must be null or a number > 0, "
                         f"got {lip['step_size']!r}")
    if not isinstance(lip["seed"], int) or isinstance(lip["seed"], bool):
        raise ValueError(f"params 'measures.lipschitz.seed' must be an integer, got {lip['seed']!r}")
    if cfg["hessian_method"] not in ("auto", "exact", "power"):
        raise ValueError(f"params 'measures.hessian_method' must be auto, exact or power, "
                         f"got {cfg['hessian_method']!r}")
    if cfg["convention"] not in ("grad_times_input", "abs"):
        raise ValueError(f"params 'measures.convention' must be grad_times_input or abs, got {cfg['convention']!r}")
    positive_int("k", cfg["k"])
    if cfg["bound_lipschitz"] not in ("random", "adversarial", "matched"):
        raise ValueError(f"params 'measures.bound_lipschitz' must be random, adversarial or matched, "
                         f"got {cfg['bound_lipschitz']!r}")
    if cfg["bound_setting"] is not None and not isinstance(cfg["bound_setting"], str):
        raise ValueError(f"params 'measures.bound_setting' must be null or a setting id string, "
                         f"got {cfg['bound_setting']!r}")
    return cfg


_SOFTPLUS = re.compile(r"^(?P<base>.+)\+softplus(?P<beta>[0-9.eE+-]+)$")


def load_model(name: str, *, checkpoints: Path, device):
    """``<checkpoints>/<name>.pt``, or the Softplus(beta) copy of a base checkpoint for ``<base>+softplus<beta>``."""
    from smoothgeo.store.checkpoints import load_checkpoint
    from smoothgeo.core.models import softplus_copy

    match = _SOFTPLUS.match(name)
    base = match["base"] if match else name
    model, meta = load_checkpoint(Path(checkpoints) / f"{base}.pt", device=device)
    if match:
        model = softplus_copy(model, float(match["beta"])).eval()
    return model, meta


def _load_record(path: Path, setting: str):
    """The setting's entry of an attack record, or None (with a warning) when the record file does not exist."""
    if not path.exists():
        warnings.warn(f"attack record {path} does not exist: no bound-test columns (run the attack stage first)",
                      stacklevel=2)
        return None
    record = torch.load(path, map_location="cpu", weights_only=True)
    if setting not in record:
        raise KeyError(f"attack record {path} has no setting {setting!r}; it has {sorted(record)} "
                       f"(set params 'measures.bound_setting' to one of them)")
    entry = record[setting]
    if "x_adv" not in entry or "image" not in entry:
        raise ValueError(f"attack record {path} setting {setting!r} lacks 'x_adv' or 'image'; re-run the attack stage")
    return entry


def _cpu(t) -> np.ndarray:
    return t.detach().cpu().double().numpy() if torch.is_tensor(t) else np.asarray(t)


def measure(model, x, y, *, cfg: dict, record: dict | None = None, name: str = "") -> pd.DataFrame:
    """The per-image measures of ``model`` on (x, y) as a frame (see the module doc for the columns)."""
    from smoothgeo.core import geometry, lipschitz

    lip = cfg["lipschitz"]
    n, bs = x.shape[0], cfg["batch_size"]
    method = cfg["hessian_method"] if cfg["jacobian"] else "power"
    lam = geometry.hessian_max_eig(model, x, method=method, chunk_size=bs, seed=lip["seed"],
                                   iters=cfg["power_iters"])
    if cfg["jacobian"]:
        geo = geometry.logit_geometry(model, x, y, lambda_max=lam, logit_scale=cfg["logit_scale"], chunk_size=bs)
    else:
        geo = gradient_geometry(model, x, y, lambda_max=lam, chunk_size=bs)
    kw = dict(epsilon=lip["epsilon"], steps=lip["steps"], step_size=lip["step_size"], beta=lip["beta"],
              seed=lip["seed"], convention=cfg["convention"], chunk_size=bs)
    rand = lipschitz.lipschitz_measures(model, x, neighbours="random", samples=lip["samples"], **kw)
    adv = lipschitz.lipschitz_measures(model, x, neighbours="adversarial", samples=lip["adversarial_samples"], **kw)
    # the climbs start from the first random neighbours (same seed); keep the larger, so adversarial >= random
    lips = {"random": rand, "adversarial": {k: torch.maximum(adv[k], rand[k]) for k in rand}}
    frame = pd.DataFrame({"model": name, "image": np.arange(n), "label": _cpu(y).astype(int)})
    frame["prediction"] = _cpu(geo["prediction"]).astype(int)
    frame["correct"] = frame.prediction == frame.label
    frame["lambda_max"] = _cpu(lam)
    for key in ("clean_conf", "logit_margin", "logit_norm", "grad_logit_norm", "grad_loss_norm", "margin_grad_norm",
                "relative_curvature", "lambda_max_fixed_scale", "lambda_max_over_grad_logit2",
                "lambda_max_over_grad_loss2"):
        frame[key] = _cpu(geo[key])
    for kind, out in lips.items():
        frame[f"lipschitz_{kind}"] = _cpu(out["gradient"])
        frame[f"lipschitz_{kind}_relative"] = _cpu(out["relative_gradient"])
        frame[f"lipschitz_{kind}_map"] = _cpu(out["map"])
    rob = cfg["robust"]
    for eps in rob["epsilons"]:   # robust accuracy of the prediction: L-inf PGD on the cross-entropy
        from smoothgeo.core.attributions import make_generator
        from smoothgeo.core.threat import robust_correct

        gen = make_generator(x.device, rob["seed"])
        frame[f"robust_eps{eps:g}"] = _cpu(robust_correct(model, x, y, epsilon=eps, steps=rob["steps"],
                                                          restarts=rob["restarts"], generator=gen,
                                                          chunk_size=bs)).astype(bool)
    if record is not None:
        frame = _add_bound(frame, model, x, record, lips.get(cfg["bound_lipschitz"]), cfg)
    return frame


def gradient_geometry(model, x, y, *, lambda_max, chunk_size: int) -> dict:
    """The columns of :func:`smoothgeo.core.geometry.logit_geometry` that need no full logit Jacobian.

    Same definitions (prediction c, runner-up r, ``g_c = grad f_c``, ``grad CE(x, y)``), from 3 backward passes
    per chunk instead of C; ``relative_curvature`` and ``lambda_max_fixed_scale`` need all C class gradients and
    are NaN. For many classes (ImageNet's 1000) with ``measures.jacobian: false``.
    """
    import torch.nn.functional as F

    from smoothgeo.core.geometry import evaluating, top_two

    parts = []
    with evaluating(model):
        for s in range(0, x.shape[0], chunk_size):
            xs = x[s:s + chunk_size].detach().clone().requires_grad_(True)
            logits = model(xs)
            c, r = top_two(logits.detach())
            rows = torch.arange(xs.shape[0], device=xs.device)
            g_c, = torch.autograd.grad(logits[rows, c].sum(), xs, retain_graph=True)
            g_r, = torch.autograd.grad(logits[rows, r].sum(), xs, retain_graph=True)
            g_loss, = torch.autograd.grad(F.cross_entropy(logits, y[s:s + chunk_size], reduction="sum"), xs)
            lg = logits.detach().double()
            p = lg.softmax(1)
            nan = torch.full((xs.shape[0],), float("nan"), dtype=torch.float64, device=xs.device)
            parts.append({"prediction": c, "clean_conf": p[rows, c], "logit_margin": lg[rows, c] - lg[rows, r],
                          "logit_norm": lg.norm(dim=1), "grad_logit_norm": g_c.flatten(1).double().norm(dim=1),
                          "grad_loss_norm": g_loss.flatten(1).double().norm(dim=1),
                          "margin_grad_norm": (g_c - g_r).flatten(1).double().norm(dim=1),
                          "relative_curvature": nan, "lambda_max_fixed_scale": nan.clone()})
    out = {k: torch.cat([p[k] for p in parts]) for k in parts[0]}
    lam = lambda_max.detach().double().to(out["grad_logit_norm"].device)
    out["lambda_max_over_grad_logit2"] = lam / out["grad_logit_norm"].pow(2).clamp_min(1e-30)
    out["lambda_max_over_grad_loss2"] = lam / out["grad_loss_norm"].pow(2).clamp_min(1e-30)
    return out


def _add_bound(frame, model, x, record, lip, cfg) -> pd.DataFrame:
    from smoothgeo.core.lipschitz import bound_test, lipschitz_at_radius

    idx = torch.as_tensor(record["image"]).long().cpu()
    if idx.numel() and (idx.min() < 0 or idx.max() >= x.shape[0]):
        raise ValueError(f"the attack record refers to image {int(idx.max())} but params 'measures.n_images' is "
                         f"{x.shape[0]}; set it to the attack stage's image count")
    x_adv = torch.as_tensor(record["x_adv"]).to(device=x.device, dtype=x.dtype)
    if x_adv.shape[0] != idx.numel() or x_adv.shape[1:] != x.shape[1:]:
        raise ValueError(f"attack record x_adv {tuple(x_adv.shape)} does not match images {tuple(x.shape[1:])} "
                         f"x {idx.numel()} indices; re-run the attack stage")
    dev_idx = idx.to(x.device)
    clean = x[dev_idx]
    if cfg["bound_lipschitz"] == "matched":  # L at each image's own ||delta||, on independent sign directions
        radius = (x_adv - clean).flatten(1).norm(dim=1)
        lm = lipschitz_at_radius(model, clean, radius, samples=cfg["lipschitz"]["samples"],
                                 seed=cfg["lipschitz"]["seed"] + 1, convention=cfg["convention"])
        lip_grad, lip_map = lm["gradient"], lm["map"]
    else:
        lip_grad, lip_map = lip["gradient"][dev_idx], lip["map"][dev_idx]
    out = bound_test(model, clean, x_adv, lip_grad, map_lipschitz=lip_map, convention=cfg["convention"],
                     k=cfg["k"])
    names = ["delta_norm", "linf", *[k for k in out if k != "delta_norm"]]
    cols = {f"bound_{k}": np.full(len(frame), np.nan) for k in names}
    moved = _cpu(out["delta_norm"]) > 0          # an unperturbed image (x_adv == x) tests nothing: left NaN
    rows = idx.numpy()[moved]
    cols["bound_linf"][rows] = _cpu((x_adv - clean).flatten(1).abs().amax(1))[moved]
    for k, v in out.items():
        cols[f"bound_{k}"][rows] = _cpu(v)[moved]
    frame = frame.assign(bound_setting=cfg["bound_setting"])
    return frame.assign(**cols)


def write_csv_gz(path, frame: pd.DataFrame) -> None:
    """Write ``frame`` as gzip'd CSV with identical bytes for identical content (mtime 0, no file name)."""
    from smoothgeo.store.atomic import atomic_path

    text = frame.to_csv(index=False, float_format="%.10g", lineterminator="\n")
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        with gzip.GzipFile(filename="", mode="wb", fileobj=fh, mtime=0, compresslevel=9) as gz:
            gz.write(text.encode())


def main(argv=None) -> int:
    from smoothgeo.store.names import cli_name

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--params", default="params.yaml")
    parser.add_argument("--model", required=True, type=cli_name("--model"),
                        help="checkpoint name (e.g. natural-s0) or <base>+softplus<beta>")
    parser.add_argument("--checkpoints", default="data/checkpoints")
    parser.add_argument("--attacks", default="data/attacks")
    parser.add_argument("--out", default="results/measures")
    parser.add_argument("--explanations", default="results/explanations",
                        help="folder of the faithfulness / stability table (smoothgeo.pipeline.explain)")
    parser.add_argument("--timings", default="results/timings")
    parser.add_argument("--device", default=None, help="auto, cpu, cuda, ...; default: params 'device' or auto")
    parser.add_argument("--root", default=None, help="folder the data root is relative to (default: cwd)")
    args = parser.parse_args(argv)
    try:
        _run(args)
    except (ValueError, KeyError, FileNotFoundError, TypeError) as exc:
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else exc
        print(f"measure_stage: error: {msg}", file=sys.stderr)
        return 2
    except Exception as exc:  # checkpoint errors and the like: keep the message on one line
        if type(exc).__name__ != "CheckpointError":
            raise
        print(f"measure_stage: error: {exc}", file=sys.stderr)
        return 2
    return 0


def _test_accuracy(model, data: dict, *, seed: int, device, root) -> float:
    """Clean accuracy on the profile's whole test split (``data.test_limit`` images, or all): the accuracy of
    models without a training record of their own (softplus copies), same rule as the training records'."""
    from smoothgeo.data.datasets import load_tensors
    from smoothgeo.data.images import test_accuracy

    data_root = Path(data["root"]) if root is None else Path(root) / data["root"]
    x, y = load_tensors(data["dataset"], "test", root=data_root, limit=data.get("test_limit"), seed=seed)
    with torch.no_grad():
        return test_accuracy(model, x, y)


def _run(args) -> None:
    from smoothgeo.data.images import eval_images
    from smoothgeo.store.atomic import atomic_write_json, load_params
    from smoothgeo.core.device import resolve_device, set_threads

    start = time.perf_counter()
    params = load_params(args.params)
    set_threads(params.get("threads"))
    cfg = measure_config(params)
    for key in ("data", "seed"):
        if key not in params:
            raise ValueError(f"params file {args.params} lacks the top-level {key!r} the evaluation images need")
    device = resolve_device(args.device or params.get("device") or "auto")
    model, _ = load_model(args.model, checkpoints=Path(args.checkpoints), device=device)
    x, y = eval_images(params["data"], cfg["n_images"], seed=params["seed"], device=device,
                       root=None if args.root is None else Path(args.root))
    record = None
    if cfg["bound_setting"] is not None:
        record = _load_record(Path(args.attacks) / f"{args.model}.pt", cfg["bound_setting"])
    frame = measure(model, x, y, cfg=cfg, record=record, name=args.model)
    frame["test_accuracy"] = _test_accuracy(model, params["data"], seed=params["seed"], device=device,
                                            root=None if args.root is None else Path(args.root))
    out = Path(args.out) / f"{args.model}.csv.gz"
    from smoothgeo.pipeline.explain import COLUMNS, explain_frame, explains

    ex = cfg["explain"]
    n_ex = min(ex["n_images"], x.shape[0])
    explained = pd.DataFrame(columns=COLUMNS)
    if explains(ex, args.model):
        explained = explain_frame(model, x[:n_ex], y[:n_ex], cfg=ex, method_options=params.get("methods") or {},
                                  convention=cfg["convention"], chunk_size=cfg["batch_size"], name=args.model)
    write_csv_gz(Path(args.explanations) / f"{args.model}.csv.gz", explained)
    write_csv_gz(out, frame)
    rss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    atomic_write_json(Path(args.timings) / f"measure-{args.model}.json", {
        "model": args.model, "stage": "measure", "wall_seconds": round(time.perf_counter() - start, 3),
        "peak_rss_mib": round(rss_kib / 1024, 1), "n_images": int(x.shape[0]), "device": str(device),
        "torch_threads": torch.get_num_threads(), "bound_test": record is not None})
    print(f"measure_stage: wrote {out} ({len(frame)} images)")


if __name__ == "__main__":
    sys.exit(main())
