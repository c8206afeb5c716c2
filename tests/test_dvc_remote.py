"""Sharing cached checkpoints through a DVC remote: a fresh clone pulls them and `dvc repro` then trains nothing.

A tiny DVC project in tmp_path stands in for the repository: one `train` stage writes a cached "checkpoint" (and
notes in a log outside the project each time it really runs). Clone A reproduces and pushes to a local-folder
remote; clone B, fresh from git, pulls, and `dvc status` / `dvc repro` must find nothing to do. The timings of the
round trip are printed (run pytest with -s to see them).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

DVC = shutil.which("dvc")
GIT = shutil.which("git")
pytestmark = pytest.mark.skipif(DVC is None or GIT is None, reason="needs the dvc and git executables")

TRAIN = """\
import os, sys, yaml
params = yaml.safe_load(open("params.yaml"))["train"]
with open(os.environ["TRAIN_LOG"], "a") as log:
    log.write(os.getcwd() + "\\n")
os.makedirs("data/checkpoints", exist_ok=True)
with open("data/checkpoints/model.pt", "wb") as f:
    f.write(bytes(range(256)) * (params["size_kib"] * 4))
os.makedirs("results", exist_ok=True)
with open("results/metrics.json", "w") as f:
    f.write('{"accuracy": %s}\\n' % params["accuracy"])
"""

DVC_YAML = """\
stages:
  train:
    cmd: python train.py
    deps: [train.py]
    params: [train]
    outs: [data/checkpoints/model.pt]
    metrics:
      - results/metrics.json:
          cache: false
"""


def sh(*args, cwd, env, check=True):
    result = subprocess.run(list(args), cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({result.returncode}):\n{result.stdout}\n{result.stderr}")
    return result


def test_fresh_clone_pulls_checkpoints_and_reproduces_nothing(tmp_path):
    log = tmp_path / "train.log"
    env = {**os.environ, "TRAIN_LOG": str(log), "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org", "DVC_NO_ANALYTICS": "1",
           "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}
    origin, remote, clone = tmp_path / "origin", tmp_path / "remote", tmp_path / "clone"
    timings: dict[str, float] = {}

    def timed(name, *args, cwd):
        start = time.perf_counter()
        out = sh(*args, cwd=cwd, env=env)
        timings[name] = round(time.perf_counter() - start, 2)
        return out

    # clone A: the project with its remote (a folder here; s3://, gs://, azure:// work the same way)
    origin.mkdir()
    (origin / "train.py").write_text(TRAIN)
    (origin / "params.yaml").write_text("train: {size_kib: 1024, accuracy: 0.9}\n")
    (origin / "dvc.yaml").write_text(DVC_YAML)
    sh(GIT, "init", "-q", "-b", "main", cwd=origin, env=env)
    sh(DVC, "init", "-q", cwd=origin, env=env)
    sh(DVC, "config", "core.analytics", "false", cwd=origin, env=env)
    sh(DVC, "remote", "add", "-d", "shared", str(remote), cwd=origin, env=env)
    timed("repro (clone A, trains)", DVC, "repro", cwd=origin)
    assert log.read_text().count("\n") == 1
    timed("push (clone A)", DVC, "push", cwd=origin)
    sh(GIT, "add", "-A", cwd=origin, env=env)
    sh(GIT, "commit", "-qm", "pipeline and lock", cwd=origin, env=env)
    assert not (origin / "data" / "checkpoints" / "model.pt").read_bytes() == b""
    assert "data/checkpoints/model.pt" not in sh(GIT, "ls-files", cwd=origin, env=env).stdout  # in DVC, not git

    # clone B: fresh from git, no checkpoint; pull it, then nothing is out of date
    timed("git clone (clone B)", GIT, "clone", "-q", str(origin), str(clone), cwd=tmp_path)
    assert not (clone / "data" / "checkpoints" / "model.pt").exists()
    before = sh(DVC, "status", cwd=clone, env=env).stdout
    assert "deleted" in before or "changed outs" in before, before  # the checkpoint is missing before the pull
    timed("pull (clone B)", DVC, "pull", cwd=clone)
    assert (clone / "data" / "checkpoints" / "model.pt").read_bytes() == \
        (origin / "data" / "checkpoints" / "model.pt").read_bytes()
    status = timed("status (clone B)", DVC, "status", cwd=clone).stdout
    assert "up to date" in status, status
    repro = timed("repro (clone B, nothing to run)", DVC, "repro", cwd=clone).stdout
    assert log.read_text().count("\n") == 1, "dvc repro re-ran the training stage in the fresh clone"
    assert "didn't change, skipping" in repro or "up to date" in repro, repro

    # a changed parameter in clone B reruns exactly that stage, and `dvc metrics diff` shows the change
    (clone / "params.yaml").write_text("train: {size_kib: 1024, accuracy: 0.8}\n")
    timed("repro after a parameter change (clone B)", DVC, "repro", cwd=clone)
    assert log.read_text().count("\n") == 2
    diff = json.loads(sh(DVC, "metrics", "diff", "--json", cwd=clone, env=env).stdout)
    assert diff["results/metrics.json"]["accuracy"]["new"] == 0.8

    # an experiment with one parameter set on the command line, as the README shows: `dvc exp run -S ...`
    sh(GIT, "checkout", "params.yaml", cwd=clone, env=env)
    timed("exp run -S train.accuracy=0.7 (clone B)", DVC, "exp", "run", "-n", "acc07", "-S", "train.accuracy=0.7",
          cwd=clone)
    assert log.read_text().count("\n") == 3
    shown = sh(DVC, "exp", "show", "--csv", cwd=clone, env=env).stdout
    assert "acc07" in shown and "0.7" in shown, shown
    # the workspace now holds the experiment (params and results); the committed run is one `git checkout` away
    assert json.loads((clone / "results" / "metrics.json").read_text())["accuracy"] == 0.7

    with_remote = sum(1 for p in remote.rglob("*") if p.is_file())
    print("\nDVC remote round trip (1 MiB checkpoint, local-folder remote, "
          f"{with_remote} object(s) in the remote):")
    for name, seconds in timings.items():
        print(f"  {name:<42s} {seconds:6.2f} s")


METRICS_PLOTS_YAML = """\
stages: {}
metrics:
  - results/metrics.json
plots:
  - results/plots/robustness_vs_epsilon.csv:
      title: "Attributional robustness vs epsilon (worst case over the attack ensemble)"
      template: linear
      x: epsilon
      y: [natural, ssr, madry]
  - accuracy-robustness frontier:
      template: scatter
      x: clean_accuracy
      y:
        results/plots/frontier_ssr.csv: topk
        results/plots/frontier_madry.csv: topk
        results/plots/frontier_weight_decay.csv: topk
  - results/plots/geometry_vs_robustness.csv:
      template: scatter
      x: lambda_max_relative
      y: topk
  - results/figures/frontier.png
"""


def test_metrics_and_plots_in_the_proposed_form_render(tmp_path):
    """The files the pipeline should write (smoothgeo.analysis.render.save_metrics / save_plot_data) and the dvc.yaml
    entries proposed for them: `dvc metrics show` and `dvc plots show --json` both return data."""
    import pandas as pd

    from smoothgeo.analysis.render import save_metrics, save_plot_data

    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    sh(DVC, "init", "-q", "--no-scm", cwd=tmp_path, env=env)
    (tmp_path / "dvc.yaml").write_text(METRICS_PLOTS_YAML)
    save_metrics(tmp_path / "results" / "metrics.json", {
        "accuracy": {"natural": 0.8985, "ssr": 0.86, "madry": 0.84},
        "robustness": {"natural": {"SM_topk": 0.31, "IG_topk": 0.42}, "ssr": {"SM_topk": 0.36, "IG_topk": 0.45}},
        "claims": {"RQ4-ssr-vs-natural": {"effect": 0.05, "ci_low": 0.02, "ci_high": 0.08, "p_adjusted": 0.01}},
    })
    plots = tmp_path / "results" / "plots"
    save_plot_data(pd.DataFrame({"epsilon": [0.05, 0.1, 0.2], "natural": [0.5, 0.31, 0.2],
                                 "ssr": [0.55, 0.36, 0.25], "madry": [0.6, 0.4, 0.3]}),
                   plots / "robustness_vs_epsilon.csv")
    for family, acc in {"ssr": [0.89, 0.86, 0.8], "madry": [0.88, 0.84, 0.8], "weight_decay": [0.9, 0.89, 0.88]}.items():
        save_plot_data(pd.DataFrame({"model": [f"{family}{i}" for i in range(3)], "clean_accuracy": acc,
                                     "topk": [0.3, 0.35, 0.4]}), plots / f"frontier_{family}.csv")
    save_plot_data(pd.DataFrame({"model": ["natural", "ssr"], "lambda_max_relative": [1.2, 0.4],
                                 "topk": [0.31, 0.36]}), plots / "geometry_vs_robustness.csv")
    (tmp_path / "results" / "figures").mkdir()
    (tmp_path / "results" / "figures" / "frontier.png").write_bytes(b"\x89PNG\r\n\x1a\n")

    metrics = sh(DVC, "metrics", "show", "--json", cwd=tmp_path, env=env)
    flat = json.dumps(json.loads(metrics.stdout))
    assert "0.8985" in flat and "RQ4-ssr-vs-natural" in flat
    shown = sh(DVC, "metrics", "show", cwd=tmp_path, env=env).stdout
    assert "accuracy.natural" in shown and "claims.RQ4-ssr-vs-natural.effect" in shown
    rendered = json.loads(sh(DVC, "plots", "show", "--json", cwd=tmp_path, env=env).stdout)
    assert not rendered.get("errors"), rendered.get("errors")
    data = rendered.get("data", rendered)
    names = " ".join(data)
    for name in ("robustness_vs_epsilon", "accuracy-robustness frontier", "geometry_vs_robustness", "frontier.png"):
        assert name in names, names
