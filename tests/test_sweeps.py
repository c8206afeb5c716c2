"""Parameter sweeps (issue 22, item 2): `dvc exp run -S KEY=VALUE` at the root, from the shipped cache, re-running
only what the change touches; profile workspaces say in one line what to run instead. And parameters across
profiles (item 3): a notebook section a profile lacks falls back to the notebook's default.

The cause of the old failure (`No such file or directory: .../.dvc/tmp/exps/.../data/raw`): the data root is
DVC-cached but not shipped, and a run that skips stages with missing outputs (`--allow-missing`, as in `dvc repro
--pull --allow-missing`) skips the data stage, so a stage that must run (in the workspace, or in the experiment's
temporary copy, which gets only git files and what the local cache holds) finds no data/raw. The main command
therefore pulls and then runs plain `dvc repro`: the data stage re-creates data/raw (same bytes, so nothing
downstream reruns) and puts it into the local cache, from where every experiment, `--temp` and `--queue` ones
included, restores it.

A toy DVC project with this tree's scripts (tests/test_store.py: data -> train -> attack -> report, each stage
logging that it ran), shipped and cloned; seconds.
"""
from __future__ import annotations

import csv
import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))
from test_store import DVC, GIT, make_toy, ran, run, toy_env  # noqa: E402

pytestmark = pytest.mark.skipif(not Path(DVC).exists() or GIT is None, reason="needs the dvc and git executables")


def _fresh_clone(tmp_path: Path) -> tuple[Path, dict]:
    env = toy_env(tmp_path)
    make_toy(tmp_path / "origin", env)
    clone = tmp_path / "clone"
    run(GIT, "clone", "-q", tmp_path / "origin", clone, cwd=tmp_path, env=env)
    return clone, env


def _reset(env: dict) -> None:
    Path(env["TOY_LOG"]).write_text("")


def _exp_rows(clone: Path, env: dict) -> dict[str, dict]:
    text = run(DVC, "exp", "show", "--csv", cwd=clone, env=env).stdout
    return {row["Experiment"]: row for row in csv.DictReader(io.StringIO(text)) if row.get("Experiment")}


def test_sweep_at_the_root_reruns_only_what_the_change_touches(tmp_path):
    clone, env = _fresh_clone(tmp_path)
    run("bash", "scripts/repro.sh", cwd=clone, env=env)  # the main command: pull, then the data stage only
    assert ran(env) == ["data"]

    _reset(env)
    run(DVC, "exp", "run", "-n", "steps3", "-S", "attack.steps=3", cwd=clone, env=env)
    assert ran(env) == ["attack", "report"]             # no training: the checkpoints came from the store
    assert "3," in (clone / "results" / "attack.csv").read_text()

    # in DVC's temporary copy (.dvc/tmp/exps/...) as well, with and without --allow-missing: data/raw comes back
    # from the local cache there
    run(GIT, "checkout", "--", ".", cwd=clone, env=env)
    run(DVC, "checkout", "--force", cwd=clone, env=env)
    _reset(env)
    run(DVC, "exp", "run", "--temp", "-n", "lr2", "-S", "train.lr=2", cwd=clone, env=env)
    assert ran(env) == ["train", "attack", "report"]
    _reset(env)
    run(DVC, "exp", "run", "--temp", "--allow-missing", "-n", "steps4", "-S", "attack.steps=4", cwd=clone, env=env)
    assert ran(env) == ["attack", "report"]

    rows = _exp_rows(clone, env)
    assert {"steps3", "lr2", "steps4"} <= set(rows), rows.keys()
    assert rows["steps3"]["attack.steps"] == "3" and rows["lr2"]["train.lr"] == "2"


def test_sweep_in_a_fresh_clone_pulls_instead_of_training(tmp_path):
    """Before the main command has run: `dvc exp run --pull -S` takes the checkpoints from the store, re-creates
    the data root, and runs only the changed stage and what follows it."""
    clone, env = _fresh_clone(tmp_path)
    run(DVC, "exp", "run", "--pull", "-n", "steps5", "-S", "attack.steps=5", cwd=clone, env=env)
    assert ran(env) == ["data", "attack", "report"]
    assert "steps5" in _exp_rows(clone, env)


@pytest.mark.parametrize("args, expected", [
    (["-S", "attack.steps=3"], "run `dvc exp run -S KEY=VALUE` at the repository root"),
    (["default", "--set-param=attack.steps=3"], "run `dvc exp run -S KEY=VALUE` at the repository root"),
    (["smoke", "-S", "attack.steps=3"], "runs/smoke is not a git repository, so `dvc exp run -S` cannot run there: "
                                        "set the value in runs/smoke/params.yaml and run `bash scripts/repro.sh smoke`"),
])
def test_repro_sh_says_in_one_line_what_to_run_for_a_sweep(tmp_path, args, expected):
    env = toy_env(tmp_path)
    make_toy(tmp_path / "origin", env)
    result = run("bash", "scripts/repro.sh", *args, cwd=tmp_path / "origin", env=env, check=False)
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr
    assert ran(env) == [] and not (tmp_path / "origin" / "runs").exists()   # nothing ran, no workspace made


# --- a notebook's own section on profiles that lack it (issue 22, item 3: the DVC side) -----------------------

def _nb(path: Path, source: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(source)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(seed, sg_noise['level'], attacks['n_images'])")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    nbformat.write(nb, str(path))
    return path


CELL = ('# sections: seed, sg_noise, attacks.n_images\nseed = 0\nsg_noise = {"level": 0.25, "cap": float("inf")}\n'
        'attacks = {"n_images": 7}')


def test_a_section_a_profile_lacks_falls_back_to_the_notebooks_default(tmp_path, capsys):
    from smoothgeo.pipeline import notebook_params as nbp

    nb = _nb(tmp_path / "new.ipynb", CELL)
    params = tmp_path / "params.yaml"
    params.write_text("seed: 3\nattacks: {n_images: 5}\n")          # a profile without the notebook's sg_noise
    import nbformat

    values = nbp.notebook_parameters(nbp.read_params(params), nbp.declared_sections(nbformat.read(str(nb), 4)),
                                     nbp.cell_defaults(nbformat.read(str(nb), 4)), warn=print)
    assert values == {"seed": 3, "sg_noise": {"level": 0.25, "cap": float("inf")}, "attacks": {"n_images": 5}}
    assert "'sg_noise' is not in the params file" in capsys.readouterr().out
    # sync keeps the default of the missing section, takes the others from the params file
    assert nbp.sync([nb], params=params) == [nb]
    assert nbp.cell_defaults(nbformat.read(str(nb), 4)) == values
    assert nbp.check([nb], params=params) == {}
    # a section neither defines is still an error, naming it
    with pytest.raises(KeyError, match="'other'"):
        nbp.notebook_parameters({"seed": 3}, ["seed", "other"], {"seed": 0})


@pytest.mark.slow
def test_run_executes_a_notebook_on_a_profile_without_its_section(tmp_path):
    pytest.importorskip("papermill")
    import nbformat

    from smoothgeo.pipeline import notebook as snb

    nb = _nb(tmp_path / "new.ipynb", CELL)
    params = tmp_path / "params.yaml"
    params.write_text("seed: 3\nattacks: {n_images: 5}\n")
    out = snb.run(nb, tmp_path / "out" / "new.ipynb", params=params, cwd=tmp_path, root=tmp_path)
    executed = nbformat.read(str(out), 4)
    printed = "".join(o.get("text", "") for c in executed.cells for o in c.get("outputs", []))
    assert printed.strip() == "3 0.25 5"
