"""The claims table (RQ1-RQ4): the paper's claims beside what this run measured, computed from results/.

``python -m smoothgeo.summary --results results --out results/SUMMARY.md`` (the pipeline's last stage) writes
the claims table and the main tables; ``--readme README.md`` also copies them (with the figures) into the
README between its ``<!-- results:start -->`` and ``<!-- results:end -->`` markers. Verdicts follow fixed
rules stated in the table, so they are computed, never typed.
"""
from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd

from .io import atomic_write_text

__all__ = ["claims", "report_text", "update_readme", "main"]


def _read(results: Path, rel: str) -> pd.DataFrame:
    path = results / rel
    if not path.exists():
        raise FileNotFoundError(f"{path} is missing: run the stage that writes it (`dvc repro`)")
    return pd.read_csv(path)


def _verdict(ok: bool, partly: bool = False) -> str:
    return "reproduces" if ok else ("partly" if partly else "does not reproduce")


def claims(results: Path) -> pd.DataFrame:
    """One row per claim: research question, claim, measurement, rule, verdict."""
    results = Path(results)
    rows = []
    rt = _read(results, "robust_training/robust_training.csv").set_index("model")
    summ = _read(results, "robust_training/attack_summary.csv")
    corr = _read(results, "geometry/geometry_correlation.csv")
    bound = _read(results, "geometry/lipschitz_bound_check.csv")
    smooth = _read(results, "smoothing/smoothing.csv")
    gaps = _read(results, "transfer/transfer_gap.csv").set_index("model")

    lam = corr[(corr.geometry == "lambda_max_mean") & (corr.robustness == "SM_topk")].iloc[0]
    lip = corr[(corr.geometry == "lipschitz_adversarial") & (corr.robustness == "SM_topk")].iloc[0]
    rows.append({"RQ": "RQ1", "claim": "Smaller input-Hessian lambda_max goes with more robust gradient attributions",
                 "measured": f"Spearman(lambda_max, SM top-k) = {lam.spearman:.2f} over {int(lam.models)} models",
                 "rule": "rho <= -0.5 reproduces; rho < 0 partly",
                 "verdict": _verdict(lam.spearman <= -0.5, lam.spearman < 0)})
    rows.append({"RQ": "RQ2", "claim": "A smaller gradient-Lipschitz constant gives more stable attributions",
                 "measured": f"Spearman(adversarial Lipschitz estimate, SM top-k) = {lip.spearman:.2f}",
                 "rule": "rho <= -0.5 reproduces; rho < 0 partly",
                 "verdict": _verdict(lip.spearman <= -0.5, lip.spearman < 0)})
    within = bound.within_bound.mean()
    rows.append({"RQ": "RQ2", "claim": "Attribution change stays under L * ||delta||",
                 "measured": f"{within:.1%} of attacked images within the bound (mean over {len(bound)} models)",
                 "rule": ">= 95% reproduces; >= 50% partly",
                 "verdict": _verdict(within >= 0.95, within >= 0.5)})

    sm = summ[(summ.attacked_method == "SM") & (summ.kind == "topk")].set_index("model")
    nat = sm.loc["natural"]
    ssr_models = [m for m in sm.index if m.startswith("ssr")]
    if ssr_models:
        best = max(ssr_models, key=lambda m: sm.loc[m, "topk_mean"])
        diff = sm.loc[best, "topk_mean"] - nat.topk_mean
        se = (sm.loc[best, "topk_sem"] ** 2 + nat.topk_sem ** 2) ** 0.5
        acc_drop = rt.loc["natural", "clean_accuracy"] - rt.loc[best, "clean_accuracy"]
        rows.append({"RQ": "RQ4", "claim": "SSR makes SM more robust to the top-k attack than natural training",
                     "measured": f"SM top-k {nat.topk_mean:.3f} (natural) -> {sm.loc[best, 'topk_mean']:.3f} ({best}), "
                                 f"accuracy -{acc_drop:.1%}",
                     "rule": "gain > 2 SE reproduces; gain > 0 partly",
                     "verdict": _verdict(diff > 2 * se, diff > 0)})
    for model in [m for m in sm.index if m in ("madry", "ig_norm") or "softplus" in m]:
        diff = sm.loc[model, "topk_mean"] - nat.topk_mean
        se = (sm.loc[model, "topk_sem"] ** 2 + nat.topk_sem ** 2) ** 0.5
        rows.append({"RQ": "RQ4", "claim": f"{model} makes SM more robust than natural training (baseline)",
                     "measured": f"SM top-k {nat.topk_mean:.3f} -> {sm.loc[model, 'topk_mean']:.3f}",
                     "rule": "gain > 2 SE reproduces; gain > 0 partly",
                     "verdict": _verdict(diff > 2 * se, diff > 0)})

    topk = smooth[smooth.kind == "topk"]
    eps = sorted(topk.epsilon.unique())[len(topk.epsilon.unique()) // 2]
    at = topk[topk.epsilon == eps].set_index("variant")
    if "SM" in at.index:
        for variant in [v for v in at.index if v != "SM"]:
            diff = at.loc[variant, "topk_mean"] - at.loc["SM", "topk_mean"]
            se = (at.loc[variant, "topk_sem"] ** 2 + at.loc["SM", "topk_sem"] ** 2) ** 0.5
            rows.append({"RQ": "RQ4", "claim": f"{variant} is more robust than SM under the top-k attack",
                         "measured": f"top-k at eps {eps:g}: SM {at.loc['SM', 'topk_mean']:.3f}, "
                                     f"{variant} {at.loc[variant, 'topk_mean']:.3f}",
                         "rule": "gain > 2 SE reproduces; gain > 0 partly",
                         "verdict": _verdict(diff > 2 * se, diff > 0)})

    if "natural" in gaps.index:
        for model in [m for m in gaps.index if m != "natural"]:
            g_nat, g_m = gaps.loc["natural", "off_diagonal_topk"], gaps.loc[model, "off_diagonal_topk"]
            rows.append({"RQ": "RQ3", "claim": f"Attacks transfer less between methods on the smoother {model} model",
                         "measured": f"mean off-diagonal top-k {g_nat:.3f} (natural) vs {g_m:.3f} ({model})",
                         "rule": "higher off-diagonal top-k than natural reproduces",
                         "verdict": _verdict(g_m > g_nat)})
    return pd.DataFrame(rows)


_SECTIONS = [  # (title, table file, figure file) under results/
    ("Robust training (RQ2, RQ4): top-k attack at the default epsilon, random-sign floor beside it",
     "robust_training/robust_training.md", "robust_training/topk_by_recipe.png"),
    ("Stochastic smoothing (RQ4): SM vs SG vs UG on the natural model", "smoothing/smoothing.md",
     "smoothing/metric_vs_epsilon.png"),
    ("Noise floor of each method (two independent clean evaluations)", "smoothing/noise_floor.md", None),
    ("Transfer between methods (RQ3): mean top-k on / off the diagonal", "transfer/transfer_gap.md",
     "transfer/transfer_heatmaps.png"),
    ("Geometry vs robustness (RQ1, RQ2)", "geometry/geometry.md", "geometry/geometry_vs_robustness.png"),
    ("Rank correlation across models", "geometry/geometry_correlation.md", None),
    ("Gradient change on the attack's perturbations against L * ||delta||", "geometry/lipschitz_bound_check.md",
     None),
    ("Qualitative: clean and attacked maps, natural vs SSR", None, "qualitative/maps_natural_vs_ssr.png"),
    ("2-D toy: decision surfaces with SM / IG / SG arrows", "toy_2d/toy_accuracy.md", "toy_2d/decision_surfaces.png"),
]


_LONG = {"smoothing/smoothing.md"}  # linked from the README rather than copied in full


def report_text(results: Path, *, link_prefix: str = "", short: bool = False) -> str:
    """Markdown: the claims table, then every section's table (and figure link) that exists.

    ``short`` links the long tables instead of copying them (the README)."""
    results = Path(results)
    parts = ["### Claims (RQ1-RQ4)\n", "Verdicts follow the rule in their row (`smoothgeo.summary`).\n",
             claims(results).to_markdown(index=False), ""]
    for title, table, figure in _SECTIONS:
        if (table and not (results / table).exists()) or (figure and not (results / figure).exists()):
            continue
        parts.append(f"### {title}\n")
        if table and short and table in _LONG:
            parts += [f"Full table: [{table}]({link_prefix}{table})", ""]
        elif table:
            parts += [(results / table).read_text().rstrip(), ""]
        if figure:
            parts += [f"![{title}]({link_prefix}{figure})", ""]
    return "\n".join(parts) + "\n"


def update_readme(readme: Path, text: str) -> None:
    """Replace the text between the README's results markers with ``text`` (atomically)."""
    readme = Path(readme)
    start, end = "<!-- results:start -->", "<!-- results:end -->"
    body = readme.read_text()
    if start not in body or end not in body:
        raise ValueError(f"{readme} has no '{start}' ... '{end}' block to fill; add the two markers")
    head, rest = body.split(start, 1)
    _, tail = rest.split(end, 1)
    atomic_write_text(readme, f"{head}{start}\n{text}{end}{tail}")


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", default="results")
    parser.add_argument("--out", default="results/SUMMARY.md")
    parser.add_argument("--readme", default=None, help="also fill this README's results block")
    args = parser.parse_args(argv)
    results = Path(args.results)
    text = ("# Results of this run\n\nGenerated by `python -m smoothgeo.summary` from the tables in `results/`.\n\n"
            + report_text(results))
    atomic_write_text(args.out, text)
    if args.readme:
        update_readme(Path(args.readme), "## Results of the default run\n\n" + report_text(results, link_prefix="results/", short=True))
    print(text)


if __name__ == "__main__":
    main()
