"""Notebooks as their users meet them: parameters cells that match params.yaml, figures inline, compact progress
output, no machine paths in committed outputs, DVC metrics and plots.

Two parts: unit tests of ``smoothgeo.pipeline.notebook`` on a tiny notebook made in tmp_path (always run; they start a
Jupyter kernel, a few seconds each), and checks of the smoke workspace ``runs/smoke/`` that
``bash scripts/repro.sh smoke`` leaves (skipped when it does not exist, e.g. before CI's smoke run).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
pytest.importorskip("papermill")

from smoothgeo.pipeline import notebook as snb  # noqa: E402
from smoothgeo.pipeline import notebook_params as nbp  # noqa: E402
from smoothgeo.store import progress  # noqa: E402
from smoothgeo.analysis.render import display_path, find_machine_paths, scrub_paths  # noqa: E402

# names of files that live outside the repository (spelt in pieces so this file does not match itself)
OUTSIDE = tuple(a + b for a, b in ((".." + "/", "shared"), ("PAPER", ".md"), ("STYLE", ".md")))
REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "runs" / "smoke"
FIGURE_NOTEBOOKS = ["robust_training", "smoothing", "transfer", "geometry", "qualitative", "toy_2d"]
MAX_STDERR_LINES = 50

PARAMS = """\
seed: 3
device: auto
demo: {n: 4, label: "four", values: [1, 2.5, null]}
unused: {big: [1, 2, 3]}
other: {models: [a, b], size: 7}
"""

BODY = """\
import os, warnings
import matplotlib.pyplot as plt
from smoothgeo.store.progress import tqdm
for _ in tqdm(range(3), desc="outer units"):
    for _ in tqdm(range(50), desc="inner", leave=False):
        pass
print("working in", os.getcwd())
warnings.warn("a warning from " + os.getcwd())
fig, ax = plt.subplots(figsize=(2, 2))
ax.plot([0, 1], [seed, demo["n"]])
ax.set_title(demo["label"])
"""


def make_notebook(path: Path, sections: str, body: str = BODY) -> Path:
    nb = nbformat.v4.new_notebook()
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    params = nbformat.v4.new_code_cell(f"# sections: {sections}\nseed = 0\n", metadata={"tags": ["parameters"]})
    nb.cells = [nbformat.v4.new_markdown_cell("# Demo"), params, nbformat.v4.new_code_cell(body)]
    nbformat.write(nb, str(path))
    return path


@pytest.fixture()
def project(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "params.yaml").write_text(PARAMS)
    (tmp_path / "notebooks").mkdir()
    make_notebook(tmp_path / "notebooks" / "demo.ipynb", "seed, demo, other.models")
    return tmp_path


# --- parameters cells -----------------------------------------------------------------------------------------

def test_sync_writes_declared_sections_and_check_passes(project):
    nb_path = project / "notebooks" / "demo.ipynb"
    params = project / "params.yaml"
    assert nb_path in nbp.check([nb_path], params=params)  # the hand-written cell differs
    assert nbp.sync([nb_path], params=params) == [nb_path]
    assert nbp.check([nb_path], params=params) == {}
    assert nbp.sync([nb_path], params=params) == []  # idempotent
    source = nbp.parameters_cell(nbformat.read(str(nb_path), 4)).source
    assert "# sections: seed, demo, other.models" in source
    assert 'demo = {"n": 4, "label": "four", "values": [1, 2.5, None]}' in source
    assert 'other = {"models": ["a", "b"]}' in source
    assert "unused" not in source
    namespace: dict = {}
    exec(source, namespace)  # the cell is valid Python holding exactly the declared values
    assert namespace["seed"] == 3 and namespace["demo"]["values"] == [1, 2.5, None]


def test_check_reports_a_readable_diff_when_params_change(project):
    nb_path, params = project / "notebooks" / "demo.ipynb", project / "params.yaml"
    nbp.sync([nb_path], params=params)
    params.write_text(PARAMS.replace("n: 4", "n: 5"))
    problems = nbp.check([nb_path], params=params)
    diff = problems[nb_path]
    assert '-demo = {"n": 4' in diff and '+demo = {"n": 5' in diff
    result = subprocess.run([sys.executable, "-m", "smoothgeo.pipeline.notebook", "check", str(nb_path), "--params",
                             str(params)], capture_output=True, text=True, cwd=project)
    assert result.returncode == 1 and "smoothgeo.pipeline.notebook sync" in result.stdout


def test_check_names_missing_declaration_and_unknown_section(project):
    bare = make_notebook(project / "bare.ipynb", "")
    nb = nbformat.read(str(bare), 4)
    nbp.parameters_cell(nb).source = "seed = 0\n"
    nbformat.write(nb, str(bare))
    unknown = make_notebook(project / "unknown.ipynb", "seed, nosuch")
    problems = nbp.check([bare, unknown], params=project / "params.yaml")
    assert "sections:" in problems[bare]
    assert "nosuch" in problems[unknown]


# --- executing notebooks ---------------------------------------------------------------------------------------

def _run(project, out_name="demo_out.ipynb", **kwargs):
    out = project / "results" / "notebooks" / out_name
    cwd = os.getcwd()
    os.chdir(project)
    try:
        snb.run(project / "notebooks" / "demo.ipynb", out, params=project / "params.yaml", root=project, **kwargs)
    finally:
        os.chdir(cwd)
    return out


def test_run_inline_figures_quiet_progress_no_paths_and_identical_reruns(project, monkeypatch, caplog):
    monkeypatch.setenv("MPLBACKEND", "Agg")  # what an old env.sh left behind: run must override it
    monkeypatch.delenv("SMOOTHGEO_PROGRESS", raising=False)
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "lib"), os.environ.get("PYTHONPATH", "")]))
    nbp.sync([project / "notebooks" / "demo.ipynb"], params=project / "params.yaml")
    caplog.set_level("INFO")
    out = _run(project)
    assert not [r for r in caplog.records if "unknown parameter" in r.getMessage()]
    nb = nbformat.read(str(out), 4)
    assert snb.image_outputs(nb) >= 1
    assert snb.stderr_lines(nb) <= 5  # the warning only
    text = "".join(o.get("text", "") for c in nb.cells for o in c.get("outputs", []))
    assert "outer units: 3/3" in text and "inner" not in text and "IProgress" not in text
    assert "working in ." in text
    assert snb.check_paths([out], root=project) == {}
    injected = [c for c in nb.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert len(injected) == 1 and "unused" not in injected[0].source
    assert nb.metadata["papermill"]["parameters"] == {"seed": 3, "demo": {"n": 4, "label": "four",
                                                      "values": [1, 2.5, None]}, "other": {"models": ["a", "b"]}}
    assert "start_time" not in json.dumps(nb.metadata) and "iopub" not in out.read_text()
    first = out.read_bytes()
    assert _run(project).read_bytes() == first  # no timestamps or durations left


def test_run_reports_a_failing_cell_and_keeps_the_output(project, monkeypatch):
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join([str(REPO / "lib"), os.environ.get("PYTHONPATH", "")]))
    make_notebook(project / "notebooks" / "demo.ipynb", "seed", body="raise RuntimeError('boom')\n")
    nbp.sync([project / "notebooks" / "demo.ipynb"], params=project / "params.yaml")
    import papermill

    with pytest.raises(papermill.PapermillExecutionError, match="boom"):
        _run(project, "failed.ipynb")
    assert (project / "results" / "notebooks" / "failed.ipynb").exists()


# --- progress and paths (no kernel) ------------------------------------------------------------------------------

def test_progress_modes(monkeypatch, capsys):
    monkeypatch.setenv("SMOOTHGEO_PROGRESS", "quiet")
    assert progress.mode() == "quiet"
    bar = progress.tqdm(total=4, desc="attack units")
    for _ in range(4):
        bar.update(1)
    bar.set_postfix({"loss": "0.5"})
    bar.close()
    bar.close()
    inner = progress.tqdm(total=3, desc="inner", leave=False)
    inner.update(3)
    inner.close()
    assert list(progress.tqdm(range(2), desc="loop")) == [0, 1]
    assert capsys.readouterr().out == "attack units: 4/4 (loss=0.5)\nloop: 2/2\n"
    monkeypatch.setenv("SMOOTHGEO_PROGRESS", "off")
    assert list(progress.tqdm(range(2), desc="off")) == [0, 1]
    monkeypatch.setenv("SMOOTHGEO_PROGRESS", "auto")
    assert progress.mode() == "bar"  # not in a kernel
    monkeypatch.setenv("SMOOTHGEO_PROGRESS", "nonsense")
    with pytest.raises(ValueError, match="SMOOTHGEO_PROGRESS"):
        progress.mode()
    assert capsys.readouterr().out == ""


def test_paths_are_made_relative_and_checked(tmp_path):
    root = tmp_path / "repo"
    (root / "results").mkdir(parents=True)
    assert display_path(root / "results" / "a.csv", root) == "results/a.csv"
    assert display_path(root, root) == "."
    text = f'repository {root}, file {root}/results/a.csv, venv {sys.prefix}/lib/x.py, cache /root/.cache'
    assert str(root) in find_machine_paths(text, root)
    clean = scrub_paths(text, root)
    assert clean.startswith("repository ., file results/a.csv, venv <python>/lib/x.py")
    assert find_machine_paths(clean, root) == []
    assert find_machine_paths("base64 ab/tmpcd+/work9 and https://example.org/home/page", root) == []
    (root / "results" / "t.csv").write_text(f"name,path\na,{root}/data/x\n")
    (root / "results" / "fig.png").write_bytes(b"\x89PNG/tmp/root")
    found = snb.check_paths([root / "results"], root=root)
    assert list(found) == [root / "results" / "t.csv"]


def test_env_sh_is_safe_to_source(tmp_path):
    """Sourced interactively: no strict mode, no cd, MPLBACKEND=Agg dropped; from a script: strict and cd."""
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    venv = tmp_path / "venv"
    (venv / "bin").mkdir(parents=True)
    (venv / "bin" / "python").symlink_to(sys.executable)
    stamp = subprocess.run(f"cat requirements.txt pyproject.toml | sha256sum | cut -d' ' -f1", shell=True,
                           cwd=REPO, capture_output=True, text=True, check=True).stdout
    (venv / ".smoothgeo-requirements").write_text(stamp)
    if not any((p / "t10k-labels-idx1-ubyte.gz").exists() for p in (REPO / "data" / "raw" / "fashion-mnist",
                                                                     Path("/usr/share/datasets/fashion-mnist"))):
        pytest.skip("Fashion-MNIST not on this machine: env.sh would try to install it")
    env = {**os.environ, "SMOOTHGEO_VENV": str(venv), "MPLBACKEND": "Agg", "HOME": str(tmp_path)}
    script = REPO / "scripts" / "env.sh"
    inter = subprocess.run([bash, "--norc", "-i", "-c", f'source "{script}"; echo "opts=$- pwd=$PWD '
                            'mpl=${MPLBACKEND-unset}"; false; echo survived'],
                           cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert f"pwd={tmp_path} " in inter.stdout and "mpl=unset" in inter.stdout and "survived" in inter.stdout
    assert "e" not in inter.stdout.split("opts=")[1].split()[0]
    scripted = subprocess.run([bash, "-c", f'source "{script}"; echo "opts=$- pwd=$PWD"; false; echo unreached'],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60)
    assert scripted.returncode != 0 and f"pwd={REPO}" in scripted.stdout and "unreached" not in scripted.stdout


# --- the smoke workspace (after `bash scripts/repro.sh smoke`) ---------------------------------------------------

smoke = pytest.mark.skipif(not (SMOKE / "results" / "notebooks").is_dir(),
                           reason="no smoke workspace: run `bash scripts/repro.sh smoke` first")


def _executed():
    return sorted((SMOKE / "results" / "notebooks").glob("*.ipynb"))


@smoke
@pytest.mark.parametrize("name", FIGURE_NOTEBOOKS)
def test_smoke_figure_notebooks_hold_images(name):
    path = SMOKE / "results" / "notebooks" / f"{name}.ipynb"
    if not path.exists():
        pytest.skip(f"{name} is not part of this pipeline")
    assert snb.image_outputs(nbformat.read(str(path), 4)) >= 1, f"{display_path(path)} holds no figure"


@smoke
def test_smoke_notebooks_have_compact_stderr():
    counts = {p.name: snb.stderr_lines(nbformat.read(str(p), 4)) for p in _executed()}
    assert counts and max(counts.values()) <= MAX_STDERR_LINES, counts


@smoke
def test_smoke_outputs_hold_no_machine_paths():
    found = snb.check_paths([SMOKE / "results"], root=SMOKE)
    extra = [REPO, Path.home(), Path("/tmp"), Path("/work"), Path("/root")]
    for path in sorted(p for p in (SMOKE / "results").rglob("*") if p.is_file() and snb._is_text(p)):
        text = snb._text_without_images(path)
        hits = [str(e) for e in extra if f"{e}/" in text or f"{e}\"" in text]
        if hits:
            found.setdefault(path, []).extend(hits)
    assert not found, {display_path(p, REPO): v for p, v in found.items()}


@smoke
def test_smoke_injected_parameters_match_params_yaml():
    """Each executed notebook received exactly the sections it declares, with the workspace's values."""
    params = nbp.read_params(SMOKE / "params.yaml")
    for path in _executed():
        nb = nbformat.read(str(path), 4)
        try:
            sections = nbp.declared_sections(nb)
        except ValueError:
            pytest.fail(f"{path.name}: parameters cell declares no sections")
        injected = nb.metadata.get("papermill", {}).get("parameters", {})
        assert injected == nbp.select_params(params, sections), path.name


def test_committed_parameters_cells_match_params_yaml():
    """The notebooks as committed (what JupyterLab opens) hold params.yaml's values for their sections."""
    notebooks = sorted((REPO / "notebooks").glob("*.ipynb"))
    declared = [p for p in notebooks if nbp.SECTIONS.search(nbp.parameters_cell(nbformat.read(str(p), 4)).source)]
    if not declared:
        pytest.skip("no notebook declares its sections yet (add a '# sections:' line, then "
                    "`python -m smoothgeo.pipeline.notebook sync`)")
    problems = nbp.check(notebooks, params=REPO / "params.yaml")
    assert not problems, "\n".join(problems.values())


def _dvc(*args):
    dvc = shutil.which("dvc")
    if dvc is None:
        pytest.skip("dvc not installed")
    return subprocess.run([dvc, *args], cwd=SMOKE, capture_output=True, text=True, timeout=300)


@smoke
def test_smoke_dvc_metrics_and_plots_are_not_empty():
    import yaml

    stages = yaml.safe_load((SMOKE / "dvc.yaml").read_text())
    if not (stages.get("metrics") or stages.get("plots")
            or any("metrics" in s or "plots" in s for s in stages.get("stages", {}).values() if isinstance(s, dict))):
        pytest.skip("dvc.yaml declares no metrics or plots yet")
    metrics = _dvc("metrics", "show", "--json")
    assert metrics.returncode == 0, metrics.stderr
    data = json.loads(metrics.stdout or "{}")
    assert any(v.get("data") for v in data.values()), metrics.stdout
    plots = _dvc("plots", "show", "--json")
    assert plots.returncode == 0, plots.stderr
    data = json.loads(plots.stdout or "{}")
    assert data and not data.get("errors"), plots.stdout[:2000]


def test_repository_refers_to_no_file_outside_it():
    """Readers of a clone have only the repository: no pointer to the team's notes outside it."""
    if not (REPO / ".git").exists():
        pytest.skip("not a git checkout")
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True).stdout.split()
    bad = {}
    for name in files:
        path = REPO / name
        if name == "tests/test_notebooks.py" or not path.is_file() or not snb._is_text(path) and path.suffix not in (
                ".py", ".sh", ".toml", ".cfg", ".txt", ""):
            continue
        text = path.read_text(errors="replace")
        hits = [s for s in OUTSIDE if s in text]
        if hits:
            bad[name] = hits
    assert not bad, f"files pointing outside the repository: {bad}"


def test_committed_outputs_hold_no_machine_paths():
    """results/** as committed (tables, JSON records, executed notebooks): no absolute path of any machine."""
    if not (REPO / "results").is_dir():
        pytest.skip("no results yet")
    found = snb.check_paths([REPO / "results"], root=REPO)
    assert not found, {display_path(p, REPO): v for p, v in found.items()}


def _covered(name: str, params: set[str]) -> bool:
    head = name.split(".")[0]
    return name in params or head in params


def test_notebook_stages_depend_on_the_sections_their_notebooks_declare():
    """DVC re-runs a notebook stage when a section it uses changes only if the stage lists that section."""
    import re

    import yaml

    pipeline = yaml.safe_load((REPO / "dvc.yaml").read_text()) or {}
    variables = {k: v for entry in pipeline.get("vars", []) for k, v in entry.items()}
    expanded = []                    # (stage name, body): a foreach over a vars list gives one stage per item
    for stage_name, stage in pipeline.get("stages", {}).items():
        if not isinstance(stage, dict):
            continue
        if "foreach" in stage and isinstance(stage["foreach"], str) and stage["foreach"].strip("${}") in variables:
            for item in variables[stage["foreach"].strip("${}")]:
                body = yaml.safe_load(yaml.safe_dump(stage["do"]).replace("${item}", str(item)))
                expanded.append((f"{stage_name}@{item}", body))
        else:
            expanded.append((stage_name, stage))
    checked, problems = 0, {}
    for stage_name, stage in expanded:
        if "cmd" not in stage:
            continue
        cmd = " ".join(stage["cmd"]) if isinstance(stage["cmd"], list) else str(stage["cmd"])
        match = re.search(r"notebooks/(\w+)\.ipynb", cmd)
        if not match:
            continue
        nb = nbformat.read(str(REPO / "notebooks" / f"{match.group(1)}.ipynb"), 4)
        try:
            sections = nbp.declared_sections(nb)
        except ValueError:
            continue  # reported by test_committed_parameters_cells_match_params_yaml
        listed: set[str] = set()
        for entry in stage.get("params", []):
            if isinstance(entry, dict):
                for keys in entry.values():
                    listed.update(keys or [])
            else:
                listed.add(str(entry))
        missing = [s for s in sections if not _covered(s, listed)]
        checked += 1
        if missing:
            problems[stage_name] = missing
    assert checked >= 6, f"only {checked} notebook stages were checked"
    assert not problems, f"dvc.yaml stages missing params their notebooks declare: {problems}"
