"""The claims stage and the run's report.

``python -m smoothgeo.pipeline.summary claims --params params.yaml`` (a pipeline stage, after the attack and measure
stages) computes every claim of the paper that this repository tests, once, from the tidy tables
(:mod:`smoothgeo.analysis.claims`, :mod:`smoothgeo.analysis.frames`), and writes

* ``results/claims.csv``: one row per claim (rq, claim, metric, effect, ci_low, ci_high, p_value, p_adjusted,
  n_images, n_seeds, rule, verdict), Holm-adjusted across rows, verdicts by the fixed rule of
  :data:`smoothgeo.analysis.claims.VERDICT_RULE`;
* ``results/claims/``: the tables the claims rest on (trade-off points of every family, relative transfer per
  model), which the notebooks plot;
* ``results/metrics.json``: headline numbers for ``dvc metrics show`` / ``dvc metrics diff``.

The list of claims (:func:`claim_rows`) is fixed here, in code, before any result is seen; the parameters only
say which models form the comparisons. ``python -m smoothgeo.pipeline.summary report [--readme README.md]`` writes
``results/SUMMARY.md`` (claims in plain words, the main tables and figures, the stage timings) and fills the
README's ``<!-- results:start -->`` ... ``<!-- results:end -->`` block from the same text.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from smoothgeo.analysis import frames as analysis
from smoothgeo.analysis import claims
from smoothgeo.store.atomic import atomic_write_text, load_params
from smoothgeo.store.names import setting_id
from smoothgeo.analysis.results import load_attacks, load_measures, model_table

__all__ = ["claim_rows", "run_claims", "report_text", "collapsed_dag", "update_readme", "main"]


def _setting(attacks: pd.DataFrame, name: str, eps: float) -> str:
    sid = setting_id(name, eps)
    if sid not in set(attacks.setting):
        raise KeyError(f"attack setting {sid!r} is missing from results/attacks; it is configured in params.yaml "
                       f"`attacks.settings` ({name}) and written by the attack stage")
    return sid


def _group(models: list[str]) -> str:
    """The group name of a list of seeds of one model, e.g. ``ssr10`` for ``[ssr10-s0, ssr10-s1]``."""
    groups = {claims.parse_model(m)[0] for m in models}
    if len(groups) != 1:
        raise ValueError(f"comparison group {models} mixes {sorted(groups)}; list the seeds of one model")
    return groups.pop()


def _gap(rq: str, text: str, metric: str, exc: Exception) -> dict:
    """A claim that cannot be computed stays in the table: NaN effect, verdict "not shown", the reason as rule."""
    print(f"claims: {text!r} not computable: {exc}", file=sys.stderr)
    nan = float("nan")
    return claims.claim_row(rq, text, metric, claims.BootResult(nan, nan, nan, nan, 0, 0),
                            rule=f"not computable: {exc}")


def claim_rows(params: dict, models: pd.DataFrame, attacks: pd.DataFrame, measures: pd.DataFrame, *,
               rng: np.random.Generator, n_boot: int = 2000) -> tuple[list[dict], dict[str, pd.DataFrame]]:
    """Every claim row (before Holm) and the supporting tables. The list is fixed in advance (see module doc)."""
    cmp = params["comparisons"]
    defaults = params["attacks"]["defaults"]
    eps = float(defaults["epsilons"][0] if "epsilons" in defaults else defaults["epsilon"])
    central = cmp["central"]
    base = _group(central["natural"])
    head = _setting(attacks, "SM-topk", eps)
    rows: list[dict] = []
    support: dict[str, pd.DataFrame] = {}
    kw = dict(rng=rng, n_boot=n_boot)

    # RQ4: robust training against natural training on the same budget (central comparison, paired)
    for group_models in [central[k] for k in central if k != "natural"]:
        g = _group(group_models)
        rows.append(claims.robustness_gain(attacks, recipe=g, baseline=base, where={"setting": head}, **kw,
                                           claim=f"{g} training makes SM more robust to the top-k attack than "
                                                 f"natural training"))
        rows.append(claims.robustness_gain(attacks, recipe=g, baseline=base, metric="kendall",
                                           where={"setting": head}, **kw,
                                           claim=f"{g} training keeps SM's pixel ranking (Kendall) under attack"))
        for name, metric, method, what in [("SM-mass_center", "mass_center", "SM", "the centre-of-mass attack"),
                                           ("SM-targeted", "target_remaining", "SM", "the targeted attack"),
                                           ("IG-topk", "topk", "IG", "the top-k attack on IG")]:
            rows.append(claims.robustness_gain(attacks, recipe=g, baseline=base, metric=metric, method=method,
                                               where={"setting": _setting(attacks, name, eps)}, **kw,
                                               claim=f"{g} training makes {method} more robust to {what}"))
    ft = cmp.get("finetune") or {}
    if ft.get("ig_norm") and ft.get("natural"):
        rows.append(claims.robustness_gain(attacks, recipe=_group(ft["ig_norm"]), baseline=_group(ft["natural"]),
                                           where={"setting": head}, **kw,
                                           claim="IG-NORM fine-tuning makes SM more robust than natural "
                                                 "fine-tuning of the same model for the same batches"))

    # RQ4: trade-off curves; SSR against the other families at matched accuracy and at matched cost
    points = analysis.frontier_points(attacks, models, families=cmp["families"], baseline=central["natural"],
                                      setting=head, metric="topk", rng=rng, n_boot=n_boot // 2)
    support["frontier_points"] = points
    pts = points.rename(columns={"robustness": "topk", "robustness_low": "topk_low",
                                 "robustness_high": "topk_high"})
    for other in [f for f in cmp["families"] if f != "ssr"]:
        for x in ("accuracy", "cost"):
            text = f"SSR is more robust than {other} at matched {'clean accuracy' if x == 'accuracy' else 'training cost'}"
            try:
                row, _ = claims.frontier_comparison(pts, "ssr", other, x=x, **kw, claim=text)
                # n_images: the fewest attacked images behind any point (the comparison's unit is a point)
                row["n_images"] = int(pts[pts.family.isin(["ssr", other])].n_images.min())
            except ValueError as exc:           # no overlap: reported in the table (verdict "not shown")
                row = _gap("RQ4", text, "topk", exc)
            rows.append(row)

    # RQ4: stochastic smoothing against SM on the natural models, one matched attack budget, four metrics
    for variant in ("SG", "UG"):
        for kind, metric in [("topk", "topk"), ("topk", "kendall"), ("mass_center", "mass_center"),
                             ("targeted", "target_remaining")]:
            pair = [_setting(attacks, f"SM-{kind}-b10", eps), _setting(attacks, f"{variant}-{kind}-b10", eps)]
            rows.append(claims.smoothing_gain(attacks, variant=variant, family=base, metric=metric,
                                              where={"setting": pair}, **kw,
                                              claim=f"{variant} is more robust than SM under the {kind} attack"))

    # RQ1 / RQ2: geometry against robustness, within models (per image) and across models (controlling accuracy)
    acc = analysis.with_accuracy(models, measures)[["model", "test_accuracy"]].rename(
        columns={"test_accuracy": "clean_accuracy"})
    per_model = claims.model_table(measures, attacks, where={"setting": head, "attacked_method": "SM",
                                                            "evaluated_method": "SM"}, accuracy=acc,
                                   geometry=("lambda_max", "relative_curvature", "lambda_max_fixed_scale",
                                             "lipschitz_adversarial", "lipschitz_adversarial_map"))
    support["geometry_per_model"] = per_model
    for geo in ("lambda_max", "relative_curvature"):
        rows.append(claims.curvature_within(measures, attacks, family=base, geometry=geo,
                                            where={"setting": head, "attacked_method": "SM",
                                                   "evaluated_method": "SM"}, rng=rng, n_boot=n_boot // 2))
    for geo, rq in [("lambda_max", "RQ1"), ("lambda_max_fixed_scale", "RQ1"), ("lipschitz_adversarial", "RQ2"),
                    ("lipschitz_adversarial_map", "RQ2")]:
        rows.append(claims.curvature_across(per_model, geometry=geo, rq=rq, **kw))
    if "bound_grad_change" in measures.columns:
        for fn, text, metric in [
                (lambda: claims.bound_predictiveness(measures, family=base, target="map", rng=rng,
                                                     n_boot=n_boot // 2),
                 f"A larger gradient-Lipschitz constant lets the attack move the map further ({base} models)",
                 "bound_map_change"),
                (lambda: claims.bound_coverage(measures, family=base, rng=rng, n_boot=n_boot // 2),
                 f"The gradient change under attack stays within L * ||delta|| ({base} models)",
                 "bound_within_bound")]:
            try:
                rows.append(fn())
            except ValueError as exc:   # e.g. no correctly classified image carries a bound test: kept as a gap
                rows.append(_gap("RQ2", text, metric, exc))

    # RQ3: relative transfer between methods, smoother models against natural
    tsets = [_setting(attacks, f"{m}-topk-b10", eps) for m in ("SM", "IG", "SG", "UG")]
    transfer_models = cmp["transfer"]
    tr = attacks[attacks.setting.isin(tsets) & attacks.model.isin(transfer_models)]
    support["relative_transfer"] = claims.relative_transfer_table(tr, rng=rng, n_boot=n_boot)
    for group in sorted({claims.parse_model(m)[0] for m in transfer_models} - {base}):
        rows.append(claims.transfer_difference(tr, smooth=group, baseline=base, where={"setting": tsets}, **kw))
    return rows, support


def _metrics(table: pd.DataFrame, models: pd.DataFrame, attacks: pd.DataFrame, head: str) -> dict:
    own = analysis.own_rows(attacks, head)
    own = own[own.attacked.astype(bool)]
    return {
        "accuracy": {r.model: r.test_accuracy for r in models.itertuples() if pd.notna(r.test_accuracy)},
        "sm_topk_under_attack": own.groupby("model").topk.mean().to_dict(),
        "claims": {f"{r.rq} {r.claim} [{r.metric}]": {"effect": r.effect, "ci_low": r.ci_low,
                                                       "ci_high": r.ci_high, "verdict": r.verdict}
                   for r in table.itertuples()},
    }


def run_claims(params: dict, results: str | Path = "results", *, n_boot: int = 2000) -> pd.DataFrame:
    """Compute and write the claims table, its supporting tables and the DVC metrics; return the table."""
    from smoothgeo.analysis.render import save_metrics, save_table

    results = Path(results)
    models = model_table(params, results)
    measures = load_measures(results, models.model)
    models = analysis.with_accuracy(models, measures)
    attacks = load_attacks(results, models.model)
    rng = np.random.default_rng(params.get("seed", 0))
    rows, support = claim_rows(params, models, attacks, measures, rng=rng, n_boot=n_boot)
    table = claims.claims_table(rows)
    claims.write_claims(table, results / "claims.csv")
    folder = results / "claims"
    for name, frame in support.items():
        save_table(frame, folder, name)
    defaults = params["attacks"]["defaults"]
    eps = float(defaults["epsilons"][0] if "epsilons" in defaults else defaults["epsilon"])
    save_metrics(results / "metrics.json", _metrics(table, models, attacks, setting_id("SM-topk", eps)))
    return table


# ------------------------------------------------------------------------------------------------------ report
_SECTIONS = [  # (title, table, figure) relative to results/
    ("Accuracy-robustness trade-off (RQ4): every family, every strength", "claims/frontier_points.md",
     "robust_training/frontier.png"),
    ("Robustness per model under the ensemble attack (RQ2, RQ4)", "robust_training/robust_training.md", None),
    ("Robustness against epsilon, central comparison", None, "robust_training/topk_vs_epsilon.png"),
    ("Attack diagnostics", "robust_training/attack_diagnostics_headline.md", None),
    ("Stochastic smoothing (RQ4): SM vs SG vs UG on the natural models", "smoothing/smoothing.md",
     "smoothing/smoothing_by_metric.png"),
    ("Relative transfer between attribution methods (RQ3)", "claims/relative_transfer.md",
     "transfer/transfer_heatmaps.png"),
    ("Geometry per model (RQ1, RQ2)", "claims/geometry_per_model.md", "geometry/geometry_vs_robustness.png"),
    ("Qualitative: clean and attacked maps", None, "qualitative/maps_by_model.png"),
    ("2-D toy: decision surfaces with SM / IG / SG arrows", "toy_2d/toy_accuracy.md", "toy_2d/decision_surfaces.png"),
]
_LONG = {"robust_training/robust_training.md", "smoothing/smoothing.md", "robust_training/attack_diagnostics_headline.md"}


def _claims_markdown(table: pd.DataFrame) -> str:
    show = table.assign(**{"95% CI": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(table.ci_low, table.ci_high)]})
    show = show[["rq", "claim", "metric", "effect", "95% CI", "p_adjusted", "n_images", "n_seeds", "verdict"]]
    return show.to_markdown(index=False, floatfmt=".3g")


def _timings_markdown(results: Path, *, grouped: bool = False) -> str:
    """The stage-timing table; ``grouped`` folds the per-model stages (train-*, attack-*, measure-*) into one row
    each: number of stages, total and longest wall time, peak memory."""
    from smoothgeo.pipeline.timed import timing_table

    frame = timing_table(results / "timings")
    if frame.empty:
        return ""
    if not grouped:
        return frame[["stage", "wall_seconds", "wall_minutes", "peak_rss_mib"]].to_markdown(index=False,
                                                                                              floatfmt=".1f")
    stages = frame[frame.stage != "total"]
    group = stages.stage.where(~stages.stage.str.contains("-"), stages.stage.str.split("-").str[0] + " (per model)")
    table = (stages.groupby(group, sort=False)
             .agg(stages=("stage", "size"), total_minutes=("wall_seconds", lambda v: v.sum() / 60),
                  longest_minutes=("wall_seconds", lambda v: v.max() / 60), peak_rss_mib=("peak_rss_mib", "max"))
             .reset_index().rename(columns={"stage": "stage group"}))
    total = {"stage group": "total", "stages": int(table.stages.sum()), "total_minutes": table.total_minutes.sum(),
             "longest_minutes": table.longest_minutes.max(), "peak_rss_mib": table.peak_rss_mib.max()}
    table = pd.concat([table, pd.DataFrame([total])], ignore_index=True)
    return table.to_markdown(index=False, floatfmt=".1f")


def report_text(results: Path, *, link_prefix: str = "", short: bool = False) -> str:
    """Markdown: the claims table, every section's table (and figure link) that exists, the stage timings."""
    results = Path(results)
    table = pd.read_csv(results / "claims.csv")
    parts = ["### Claims (RQ1-RQ4)\n",
             f"Effects are oriented so that positive = the paper's direction; 95% bootstrap intervals over training "
             f"seeds and images; p adjusted by Holm across the {len(table)} rows. Verdict rule: "
             f"{claims.VERDICT_RULE}. Rules and plain words: [claims.csv]({link_prefix}claims.csv).\n",
             _claims_markdown(table), ""]
    for title, tab, figure in _SECTIONS:
        if (tab and not (results / tab).exists()) or (figure and not (results / figure).exists()):
            continue
        parts.append(f"### {title}\n")
        if tab and short and tab in _LONG:
            parts += [f"Full table: [{tab}]({link_prefix}{tab})", ""]
        elif tab:
            parts += [(results / tab).read_text().rstrip(), ""]
        if figure:
            parts += [f"![{title}]({link_prefix}{figure})", ""]
    timings = _timings_markdown(results, grouped=short)
    if timings:
        where = f" Per stage: [SUMMARY.md]({link_prefix}SUMMARY.md)." if short else ""
        parts += ["### Stage timings of this run (wall time, peak resident memory)\n",
                  f"Written by `smoothgeo.pipeline.timed` around every stage (`results/timings/`).{where}\n", timings, ""]
    return "\n".join(parts) + "\n"


def collapsed_dag(mermaid: str) -> str:
    """``dvc dag --mermaid`` with every ``foreach`` stage folded into one node (``attack (x21)``), edges deduplicated,
    so the pipeline reads as a graph of a dozen nodes instead of hundreds."""
    import re

    names, edges = {}, set()
    for line in mermaid.splitlines():
        m = re.match(r'\s*(node\d+)\["(.+)"\]\s*$', line)
        if m:
            names[m[1]] = m[2].split("@")[0]
            continue
        m = re.match(r"\s*(node\d+)-->(node\d+)\s*$", line)
        if m:
            edges.add((m[1], m[2]))
    counts = pd.Series(list(names.values())).value_counts()
    label = {n: f"{n} (x{counts[n]})" if counts[n] > 1 else n for n in counts.index}
    ids = {n: f"s{i}" for i, n in enumerate(sorted(label))}
    folded = sorted({(names[a], names[b]) for a, b in edges if names[a] != names[b]})
    lines = ["flowchart TD"] + [f'\t{ids[n]}["{label[n]}"]' for n in sorted(label)]
    lines += [f"\t{ids[a]}-->{ids[b]}" for a, b in folded]
    return "\n".join(lines)


def _dag_markdown() -> str:
    import subprocess

    try:
        out = subprocess.run(["dvc", "dag", "--mermaid"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return ""
    return "```mermaid\n" + collapsed_dag(out) + "\n```\n"


def update_readme(readme: Path, text: str, *, start: str = "<!-- results:start -->",
                  end: str = "<!-- results:end -->") -> None:
    """Replace the text between two markers of the README (the results block by default) with ``text``."""
    readme = Path(readme)
    body = readme.read_text()
    if start not in body or end not in body:
        raise ValueError(f"{readme} has no '{start}' ... '{end}' block to fill; add the two markers")
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{text}{end}{tail}")


def _standin_banner(params: Path) -> str:
    """A warning on top of SUMMARY.md when the run's data were a synthetic stand-in (the toy profiles)."""
    if not params.exists():
        return ""
    data = (load_params(params).get("data") or {})
    if data.get("standin") is None:
        return ""
    return (f"> **Toy run on a synthetic stand-in for {data.get('dataset')}** (`data.standin`, "
            f"smoothgeo.data.standins), with tiny sizes and barely trained or random-weight models. It shows that "
            f"the pipeline runs; its numbers say nothing about the paper.\n\n")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    c = sub.add_parser("claims", help="compute results/claims.csv, results/claims/ and results/metrics.json")
    c.add_argument("--params", default="params.yaml")
    c.add_argument("--results", default="results")
    c.add_argument("--n-boot", type=int, default=2000)
    r = sub.add_parser("report", help="write results/SUMMARY.md (and the README's results block)")
    r.add_argument("--results", default="results")
    r.add_argument("--readme", default=None)
    r.add_argument("--params", default="params.yaml", help="read for data.standin: a toy run says so on top")
    args = parser.parse_args(argv)
    try:
        if args.command == "claims":
            table = run_claims(load_params(args.params), args.results, n_boot=args.n_boot)
            print(table[["rq", "claim", "metric", "effect", "ci_low", "ci_high", "verdict"]].to_string())
            return 0
        results = Path(args.results)
        text = ("# Results of this run\n\nGenerated by `python -m smoothgeo.pipeline.summary report` from `results/`.\n\n"
                + _standin_banner(Path(args.params)) + report_text(results))
        atomic_write_text(results / "SUMMARY.md", text)
        if args.readme:
            update_readme(Path(args.readme), "## Results of the default run\n\n"
                          + report_text(results, link_prefix="results/", short=True))
            dag = _dag_markdown()
            if dag:
                update_readme(Path(args.readme), dag, start="<!-- dag:start -->", end="<!-- dag:end -->")
        return 0
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
