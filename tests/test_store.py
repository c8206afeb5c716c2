"""The shipped store (issue 22, items 1 and 6): the committed default run's DVC-cached outputs travel with every
clone in store/, a DVC remote inside the repository, and DVC's own views work offline.

On the repository itself:
* every cached output that dvc.lock names (an ``outs`` entry not ``cache: false``, except those dvc.yaml marks
  ``push: false``: data/raw) is in store/ in DVC 3's layout (``store/files/md5/<2>/<30>``; a directory's
  ``<md5>.dir`` listing and every file it lists), so a fresh clone's main command trains nothing;
* the remote is ``shipped``, the default, with a relative url that resolves to ``<repo>/store``; the store stays
  under 64 MiB;
* every committed figure (results/**/*.png) is a declared plot and ``dvc plots show`` writes a page that loads
  nothing from the network.

On a toy DVC project (seconds): scripts/ship.sh fills an in-repository store, a fresh ``git clone`` pulls it with
the network shut off (a dead proxy) through the real scripts/repro.sh, reruns only the data stage (not shipped),
and regenerates a deleted downstream output byte for byte; ``ship.sh --check`` and :func:`missing_from_store` (the
check above) name an object the store lacks.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DVC = shutil.which("dvc") or str(Path(sys.executable).parent / "dvc")
GIT = shutil.which("git")
LIMIT_MIB = 64
pytestmark = pytest.mark.skipif(not Path(DVC).exists() or GIT is None, reason="needs the dvc and git executables")


def _obj(root: Path, md5: str) -> Path:
    return root / "store" / "files" / "md5" / md5[:2] / md5[2:]


def missing_from_store(root: Path) -> list[str]:
    """``["<output> (<md5>)", ...]``: the shipped objects dvc.lock names that ``<root>/store`` lacks."""
    from dvc.repo import Repo

    missing = []
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for out in stage.outs:
                if not out.use_cache or not out.can_push or out.hash_info is None or not out.hash_info.value:
                    continue
                md5 = out.hash_info.value
                listing = _obj(root, md5)
                if not listing.is_file():
                    missing.append(f"{out.def_path} ({md5})")
                    continue
                if md5.endswith(".dir"):
                    for entry in json.loads(listing.read_text()):
                        if not _obj(root, entry["md5"]).is_file():
                            missing.append(f"{out.def_path}/{entry['relpath']} ({entry['md5']})")
    return missing


# --- the repository -------------------------------------------------------------------------------------------

def test_store_holds_every_cached_output_of_dvc_lock():
    missing = missing_from_store(ROOT)
    assert not missing, (f"{len(missing)} cached output(s) of dvc.lock are not in store/, so a fresh clone would "
                         f"recompute them: run `bash scripts/ship.sh` after the default run and commit store/. "
                         f"Missing: {', '.join(missing[:20])}")


def test_shipped_remote_is_the_default_and_lives_inside_the_repository():
    from configobj import ConfigObj  # DVC's own config reader

    config = ConfigObj(str(ROOT / ".dvc" / "config"))
    assert config.get("core", {}).get("remote") == "shipped"
    url = config['remote "shipped"']["url"]
    assert not os.path.isabs(url) and "://" not in url, url  # relative: every clone finds its own store/
    assert (ROOT / ".dvc" / url).resolve() == (ROOT / "store").resolve()
    ignored = subprocess.run([GIT, "check-ignore", "-q", "store/files/md5/00/x"], cwd=ROOT).returncode == 0
    assert not ignored, "store/ is git-ignored, so it would not reach a clone"


def test_store_stays_under_the_size_limit():
    files = [p for p in (ROOT / "store").rglob("*") if p.is_file()] if (ROOT / "store").is_dir() else []
    size = sum(p.stat().st_size for p in files)
    assert size <= LIMIT_MIB * 2**20, (f"store/ is {size / 2**20:.1f} MiB (limit {LIMIT_MIB} MiB): ship less, or "
                                       f"move the cache to a shared remote (README, 'Shared remote')")


def _declared_plots() -> set[str]:
    import yaml

    out = set()
    for entry in (yaml.safe_load((ROOT / "dvc.yaml").read_text()) or {}).get("plots", []) or []:
        out.update([entry] if isinstance(entry, str) else entry.keys())
    return out


def test_every_committed_figure_is_a_declared_plot():
    listed = subprocess.run([GIT, "ls-files", "-z", "results"], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split("\0")
    figures = {p for p in listed if p.endswith(".png")}
    declared = _declared_plots()
    assert figures, "no committed figure under results/"
    assert not figures - declared, f"figures missing from dvc.yaml plots: {sorted(figures - declared)}"
    gone = {p for p in declared if not (ROOT / p).exists()}
    assert not gone, f"dvc.yaml declares plots that do not exist: {sorted(gone)}"


def test_plots_show_renders_every_figure_with_no_network(tmp_path):
    env = {**os.environ, "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run([DVC, "plots", "show", "-o", str(tmp_path / "plots")], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr
    page = (tmp_path / "plots" / "index.html").read_text()
    assert "http://" not in page and "https://" not in page, "the plots page loads something from the network"
    shown = {p.name for p in (tmp_path / "plots" / "static").iterdir()}
    for plot in _declared_plots():
        assert any(name.endswith(plot.replace("/", "_")) for name in shown), f"{plot} not rendered"


# --- a toy project: ship, clone, pull offline -----------------------------------------------------------------

TOY = {
    "data.py": """\
import os, yaml
p = yaml.safe_load(open("params.yaml"))["data"]
open(os.environ["TOY_LOG"], "a").write("data\\n")
os.makedirs("data/raw", exist_ok=True)
open("data/raw/images.bin", "wb").write(bytes(range(256)) * p["size"])
""",
    "train.py": """\
import os, yaml
p = yaml.safe_load(open("params.yaml"))["train"]
open(os.environ["TOY_LOG"], "a").write("train\\n")
raw = open("data/raw/images.bin", "rb").read()
os.makedirs("data/checkpoints", exist_ok=True)
for seed in (0, 1):
    open(f"data/checkpoints/m-s{seed}.pt", "wb").write(raw[:1000] + bytes([seed, p["lr"]]))
os.makedirs("results", exist_ok=True)
open("results/train.json", "w").write('{"lr": %d}\\n' % p["lr"])
""",
    "attack.py": """\
import os, yaml
p = yaml.safe_load(open("params.yaml"))["attack"]
open(os.environ["TOY_LOG"], "a").write("attack\\n")
ckpt = open("data/checkpoints/m-s0.pt", "rb").read()
os.makedirs("data/attacks", exist_ok=True)
open("data/attacks/m-s0.pt", "wb").write(ckpt[::-1] * p["steps"])
open("results/attack.csv", "w").write("steps,score\\n%d,%d\\n" % (p["steps"], sum(ckpt) % 97))
""",
    "report.py": """\
import os
open(os.environ["TOY_LOG"], "a").write("report\\n")
rows = open("results/attack.csv").read().splitlines()
open("results/report.md", "w").write("# report\\n" + rows[1] + "\\n")
""",
    "params.yaml": "data: {size: 64}\ntrain: {lr: 1}\nattack: {steps: 2}\n",
    "dvc.yaml": """\
stages:
  data:
    cmd: python data.py
    deps: [data.py]
    params: [data]
    outs:
      - data/raw:
          push: false
  train:
    cmd: python train.py
    deps: [train.py, data/raw]
    params: [train]
    outs:
      - data/checkpoints
      - results/train.json:
          cache: false
  attack:
    cmd: python attack.py
    deps: [attack.py, data/raw, data/checkpoints]
    params: [attack]
    outs:
      - data/attacks/m-s0.pt
      - results/attack.csv:
          cache: false
  report:
    cmd: python report.py
    deps: [report.py, results/attack.csv]
    outs:
      - results/report.md:
          cache: false
""",
    ".gitignore": "/data/\n",
}


def toy_env(tmp_path: Path) -> dict:
    """Environment of the toy runs: the venv's dvc and python, git identity, the network shut off."""
    return {**os.environ, "TOY_LOG": str(tmp_path / "ran.log"), "DVC_NO_ANALYTICS": "1", "SMOOTHGEO_NO_SETUP": "1",
            "SMOOTHGEO_OFFLINE": "1", "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.org",
            "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.org",
            "http_proxy": "http://127.0.0.1:9", "https_proxy": "http://127.0.0.1:9",
            "HTTP_PROXY": "http://127.0.0.1:9", "HTTPS_PROXY": "http://127.0.0.1:9", "no_proxy": "",
            "PATH": os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])}


def run(*args, cwd, env, check=True):
    result = subprocess.run([str(a) for a in args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    if check and result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, args))} failed ({result.returncode}):\n{result.stdout}\n"
                             f"{result.stderr}")
    return result


def make_toy(origin: Path, env: dict) -> None:
    """A toy DVC project with this tree's scripts/repro.sh and scripts/ship.sh and the remote 'shipped' at
    ``store`` (as in .dvc/config), run once and shipped, committed."""
    origin.mkdir()
    for name, text in TOY.items():
        (origin / name).write_text(text)
    (origin / "scripts").mkdir()
    for script in ("repro.sh", "ship.sh"):
        shutil.copy(ROOT / "scripts" / script, origin / "scripts" / script)
    run(GIT, "init", "-q", "-b", "main", cwd=origin, env=env)
    run(DVC, "init", "-q", cwd=origin, env=env)
    run(DVC, "config", "core.analytics", "false", cwd=origin, env=env)
    run(DVC, "remote", "add", "-d", "shipped", "store", cwd=origin, env=env)
    run(DVC, "repro", cwd=origin, env=env)
    run("bash", "scripts/ship.sh", cwd=origin, env=env)
    run(GIT, "add", "-A", cwd=origin, env=env)
    run(GIT, "commit", "-qm", "toy run, shipped", cwd=origin, env=env)
    Path(env["TOY_LOG"]).write_text("")


def ran(env: dict) -> list[str]:
    log = Path(env["TOY_LOG"])
    return log.read_text().split() if log.exists() else []


def test_toy_store_ships_in_the_repository_and_a_fresh_clone_pulls_it_offline(tmp_path):
    env = toy_env(tmp_path)
    origin, clone = tmp_path / "origin", tmp_path / "clone"
    make_toy(origin, env)

    # the store: DVC 3 layout, a .dir listing for data/checkpoints, no data/raw (push: false), committed
    config = (origin / ".dvc" / "config").read_text()
    assert "url = ../store" in config and "remote = shipped" in config, config
    objects = sorted(p.relative_to(origin).as_posix() for p in (origin / "store").rglob("*") if p.is_file())
    assert objects and all(p.startswith("store/files/md5/") for p in objects), objects
    assert sum(p.endswith(".dir") for p in objects) == 1 and len(objects) == 4, objects  # .dir, 2 ckpts, attack
    tracked = run(GIT, "ls-files", "store", cwd=origin, env=env).stdout.split()
    assert sorted(tracked) == objects
    assert missing_from_store(origin) == []

    # a fresh clone: the main command pulls (no network: a dead proxy), reruns only the data stage
    run(GIT, "clone", "-q", origin, clone, cwd=tmp_path, env=env)
    assert not (clone / "data").exists()
    out = run("bash", "scripts/repro.sh", cwd=clone, env=env).stdout
    assert "[repro] dvc pull:" in out, out
    assert ran(env) == ["data"], (ran(env), out)
    for rel in ("data/checkpoints/m-s0.pt", "data/checkpoints/m-s1.pt", "data/attacks/m-s0.pt"):
        assert (clone / rel).read_bytes() == (origin / rel).read_bytes(), rel
    assert "up to date" in run(DVC, "status", cwd=clone, env=env).stdout
    assert run(GIT, "status", "--porcelain", cwd=clone, env=env).stdout == ""  # the same lock, the same results

    # the proof procedure in small: delete a downstream output, the main command brings it back byte for byte
    committed = (clone / "results" / "report.md").read_bytes()
    (clone / "results" / "report.md").unlink()
    Path(env["TOY_LOG"]).write_text("")
    run("bash", "scripts/repro.sh", cwd=clone, env=env)
    assert ran(env) == ["report"]
    assert (clone / "results" / "report.md").read_bytes() == committed


def test_a_missing_store_object_is_named_by_the_check(tmp_path):
    env = toy_env(tmp_path)
    origin = tmp_path / "origin"
    make_toy(origin, env)
    assert run("bash", "scripts/ship.sh", "--check", cwd=origin, env=env).returncode == 0
    from dvc.repo import Repo

    with Repo(str(origin)) as repo:
        attack = next(o for s in repo.index.stages for o in s.outs if str(o.def_path) == "data/attacks/m-s0.pt")
        md5 = attack.hash_info.value
    _obj(origin, md5).unlink()
    assert missing_from_store(origin) == [f"data/attacks/m-s0.pt ({md5})"]
    check = run("bash", "scripts/ship.sh", "--check", cwd=origin, env=env, check=False)
    assert check.returncode == 1 and "data/attacks/m-s0.pt" in check.stdout, check.stdout + check.stderr
    # one file of a directory output
    listing = json.loads(next((origin / "store").rglob("*.dir")).read_text())
    _obj(origin, listing[0]["md5"]).unlink()
    assert f"data/checkpoints/{listing[0]['relpath']} ({listing[0]['md5']})" in missing_from_store(origin)
