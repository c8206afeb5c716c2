"""The claims stage and the run's report.

``python -m smoothgeo.pipeline.summary claims --params params.yaml`` (a pipeline stage, after the attack and measure
stages) computes every claim of the paper that this repository tests, once, from the tidy tables
(:mod:`smoothgeo.analysis.claims`, :mod:`smoothgeo.analysis.frames`), and writes

* ``results/claims.csv``: one row per claim of the registry :data:`smoothgeo.analysis.claims.CLAIMS` (columns
  :data:`smoothgeo.analysis.claims.COLUMNS`), Holm-adjusted, verdicts by :data:`~smoothgeo.analysis.claims.VERDICT_RULE`;
* ``results/claims/``: the replication rows, the rows beyond the paper (``beyond.csv``: LENS, L2, faithfulness;
  Holm within them), the claims that could not be estimated and why, the learning curves
  and the tables the claims rest on (:mod:`smoothgeo.analysis.support`), which the notebooks show;
  ``protocol.json``: the commit of docs/protocol.md the rules come from;
* ``results/metrics.json``: headline numbers for ``dvc metrics show`` / ``dvc metrics diff``.

The list of claims is fixed in code (the registry) before any result is seen; the parameters only say which
models form the comparisons. ``python -m smoothgeo.pipeline.summary report [--readme README.md]`` writes
``results/SUMMARY.md`` (claims in plain words, the main tables and figures, the stage timings) and fills the
README's ``<!-- results:start -->`` ... ``<!-- results:end -->`` block from the same text.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pandas as pd

from smoothgeo.analysis import claims
from smoothgeo.analysis.support import headline_metrics, learning_curves, load_tables, support_tables
from smoothgeo.store.atomic import atomic_write_text, load_params

__all__ = ["run_claims", "report_text", "findings_text", "collapsed_dag", "update_readme", "main"]


def _protocol_commit() -> dict:
    import subprocess

    try:
        commit = subprocess.run(["git", "log", "-1", "--format=%H %cI", "--", "docs/protocol.md"], capture_output=True,
                                text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = ""
    sha, _, when = commit.partition(" ")
    return {"protocol": "docs/protocol.md", "commit": sha or None, "committed": when or None}


def run_claims(params: dict, results: str | Path = "results") -> pd.DataFrame:
    """Compute and write the claims table, its supporting tables and the DVC metrics; return the table."""
    from smoothgeo.analysis.render import save_metrics, save_table
    from smoothgeo.store.atomic import atomic_write_csv, atomic_write_json

    results = Path(results)
    t = load_tables(params, results)
    seed = int(params.get("seed", 0))
    table, gaps = claims.claims_table(t, seed=seed)
    atomic_write_csv(results / "claims.csv", table[table.family == "main"], float_format="%.6g")
    folder = results / "claims"
    save_table(table[table.family == "replication"], folder, "replication")
    save_table(table[table.family == "beyond"], folder, "beyond")
    save_table(gaps, folder, "not_estimable")
    save_table(learning_curves(params, results), folder, "learning_curves", floatfmt=".4f")
    for name, frame in support_tables(t, table, seed=seed).items():
        save_table(frame, folder, name)
    atomic_write_json(folder / "protocol.json", _protocol_commit())
    save_metrics(results / "metrics.json", headline_metrics(table, t))
    return table


# ------------------------------------------------------------------------------------------------------ report
def _sections(results: Path) -> list[tuple[str, str | None, list[str], str]]:
    """Every notebook's headline (``results/<notebook>/headline.json``, written by
    :func:`smoothgeo.analysis.render.save_headline`): (title, table, figures, answer), in the notebooks' order.
    A new notebook reaches SUMMARY.md and the README by writing its headline; the report code does not change."""
    from smoothgeo.store.atomic import read_json

    out = []
    for path in sorted(Path(results).glob("*/headline.json")):
        h = read_json(path)
        folder = path.parent.name
        figures = [f"{folder}/{f}" for f in [h.get("figure"), *(h.get("more_figures") or [])] if f]
        out.append((int(h.get("order", 100)), h["title"], h.get("table") and f"{folder}/{h['table']}", figures,
                    h.get("answer", "")))
    return [x[1:] for x in sorted(out, key=lambda x: (x[0], x[1]))]


def _claims_markdown(table: pd.DataFrame) -> str:
    show = table.assign(**{"95% CI": [f"[{lo:+.3f}, {hi:+.3f}]" for lo, hi in zip(table.ci_low, table.ci_high)]})
    show = show[["rq", "claim", "effect", "95% CI", "p_adjusted", "n_seeds", "n_images", "n_models", "verdict"]]
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
             f"Effects are oriented so that positive = the paper's direction; 95% intervals with training seeds (or "
             f"models) as the unit (the method column of [claims.csv]({link_prefix}claims.csv) says which); p "
             f"adjusted by Holm across the {len(table)} rows. Verdict rule: {claims.VERDICT_RULE}. The design was "
             f"fixed in docs/protocol.md before the run.\n", _claims_markdown(table), ""]
    for title, tab, figures, answer in _sections(results):
        if (tab and not (results / tab).exists()) or not all((results / f).exists() for f in figures):
            continue
        parts.append(f"### {title}\n")
        if answer:
            parts += [answer, ""]
        if tab and short:
            parts += [f"Table: [{tab}]({link_prefix}{tab})", ""]
        elif tab:
            parts += [(results / tab).read_text().rstrip(), ""]
        for figure in figures:
            parts += [f"![{title}]({link_prefix}{figure})", ""]
    timings = _timings_markdown(results, grouped=short)
    if timings:
        where = f" Per stage: [SUMMARY.md]({link_prefix}SUMMARY.md)." if short else ""
        parts += ["### Stage timings of this run (wall time, peak resident memory)\n",
                  f"Written by `smoothgeo.pipeline.timed` around every stage (`results/timings/`).{where}\n", timings, ""]
    return "\n".join(parts) + "\n"


_RQ = {"RQ1": "RQ1, geometry", "RQ2": "RQ2, the Lipschitz bound", "RQ3": "RQ3, transfer between methods",
       "RQ4": "RQ4, robust training and smoothing"}


def findings_text(results: Path) -> str:
    """Every claim of the run in plain words (:func:`smoothgeo.analysis.claims.plain_words`), grouped by research
    question, then the replication rows and the claims this run could not estimate: the README's findings block,
    formatted from results/claims*, never typed."""
    results = Path(results)
    table = pd.read_csv(results / "claims.csv")
    parts = [f"Formatted from `results/claims.csv` by the report stage: effects are oriented so that positive = "
             f"the paper's direction, intervals have training seeds (or models) as the unit, p-values are "
             f"Holm-adjusted over the {len(table)} main claims. {claims.VERDICT_RULE}.", ""]
    counts = table.verdict.value_counts()
    parts += ["Verdicts: " + ", ".join(f"{int(counts.get(v, 0))} {v}" for v in claims.VERDICTS) + ".", ""]
    for rq in sorted(table.rq.unique()):
        parts.append(f"**{_RQ.get(rq, rq)}.**")
        parts += [f"- {claims.plain_words(r)}" for _, r in table[table.rq == rq].iterrows()]
        parts.append("")
    for name, title in (("replication", "**Replication** (images and seeds not used while developing; Holm within "
                                        "these rows)."),
                        ("beyond", "**Beyond the paper** (another metric, another threat model, faithfulness; "
                                   "positive = the direction the row's text states; Holm within these rows).")):
        path = results / "claims" / f"{name}.csv"
        rows = pd.read_csv(path) if path.exists() else pd.DataFrame()
        if len(rows):
            parts.append(title)
            parts += [f"- {claims.plain_words(r)}" for _, r in rows.iterrows()]
            parts.append("")
    gaps = results / "claims" / "not_estimable.csv"
    if gaps.exists():
        rows = pd.read_csv(gaps)
        if len(rows):
            parts.append("**Not estimable in this run:** " + "; ".join(f"{r.id} ({r.reason})" for r in rows.itertuples())
                         + ".")
            parts.append("")
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
    r = sub.add_parser("report", help="write results/SUMMARY.md (and the README's results block)")
    r.add_argument("--results", default="results")
    r.add_argument("--readme", default=None)
    r.add_argument("--params", default="params.yaml", help="read for data.standin: a toy run says so on top")
    args = parser.parse_args(argv)
    try:
        if args.command == "claims":
            table = run_claims(load_params(args.params), args.results)
            print(table[["rq", "id", "effect", "ci_low", "ci_high", "p_adjusted", "verdict"]].to_string())
            return 0
        results = Path(args.results)
        text = ("# Results of this run\n\nGenerated by `python -m smoothgeo.pipeline.summary report` from `results/`.\n\n"
                + _standin_banner(Path(args.params)) + report_text(results))
        atomic_write_text(results / "SUMMARY.md", text)
        if args.readme:
            update_readme(Path(args.readme), "## Results of the default run\n\n"
                          + report_text(results, link_prefix="results/", short=True))
            update_readme(Path(args.readme), findings_text(results), start="<!-- findings:start -->",
                          end="<!-- findings:end -->")
            dag = _dag_markdown()
            if dag:
                update_readme(Path(args.readme), dag, start="<!-- dag:start -->", end="<!-- dag:end -->")
        return 0
    except (FileNotFoundError, KeyError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
