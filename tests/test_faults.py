"""Fault injection at smoke size (issue 10): SIGKILL during training, checkpoint writes, evaluation and a pipeline
run; truncated and bit-flipped checkpoints; two pipeline runs at once; bad inputs and bad settings.

Every test is tiny and single-threaded; subprocesses run this tree's library (``lib/`` first on PYTHONPATH) with
the interpreter running the tests, and find dvc next to it.
"""
from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from smoothgeo.store import checkpoints as ckpt
from smoothgeo.core.attacks import check_images
from smoothgeo.core.attributions import integrated_gradients, saliency
from smoothgeo.store.atomic import TEMP_SUFFIX, atomic_path, load_params, remove_stale_temps
from smoothgeo.core.models import build_model

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _env(**extra) -> dict:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO / "lib"), env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    env["PATH"] = os.pathsep.join([str(BIN), env.get("PATH", "")])
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", SMOOTHGEO_OFFLINE="1", MPLBACKEND="Agg", **extra)
    return env


def _wait_for(predicate, proc, timeout=60.0) -> bool:
    """Poll ``predicate`` every 5 ms until it holds (True) or ``proc`` exits / time runs out (False)."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if predicate():
            return True
        if proc.poll() is not None:
            return bool(predicate())
        time.sleep(0.005)
    return False


def _kill(proc) -> None:
    """SIGKILL ``proc``'s whole process group and wait until every member is gone (their files closed)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()
    end = time.monotonic() + 10
    while time.monotonic() < end:
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)


# ------------------------------------------------------------------------------------------ tiny training set
def _write_idx(path: Path, array: np.ndarray) -> None:
    array = np.asarray(array, dtype=np.uint8)
    header = bytes([0, 0, 8, array.ndim]) + np.asarray(array.shape, dtype=">i4").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(path, "wb", mtime=0) as fh:
        fh.write(header + array.tobytes())


@pytest.fixture(scope="module")
def tiny_project(tmp_path_factory):
    """A folder with stand-in Fashion-MNIST files (320 train, 64 test images) and a tiny params file."""
    root = tmp_path_factory.mktemp("tiny")
    g = np.random.default_rng(0)
    for split, n in (("train", 320), ("test", 64)):
        labels = g.integers(0, 10, n)
        images = g.integers(0, 60, (n, 28, 28))
        for c in range(10):  # a class-dependent bright block, so training learns something
            images[labels == c, 2 * c:2 * c + 6, 4:20] += 150
        img_name, lab_name = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                              "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}[split]
        _write_idx(root / "raw" / "fashion-mnist" / img_name, images)
        _write_idx(root / "raw" / "fashion-mnist" / lab_name, labels)
    params = {
        "seed": 0, "device": "cpu",
        "data": {"dataset": "fashion_mnist", "root": str(root / "raw"), "train_limit": 256, "test_limit": 64},
        "train": {"defaults": {"arch": "fashion_cnn", "epochs": 3, "lr": 0.001, "batch_size": 32,
                               "optimizer": "adam", "max_batches": 4},
                  "scratch": {"natural": {"recipe": "natural"}}, "finetune": {}},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    return root


def _train_cmd(project: Path, folder: Path, *extra) -> list[str]:
    return [sys.executable, "-m", "smoothgeo.pipeline.train", "--params", str(project / "params.yaml"), "--name", "natural",
            "--checkpoints", str(folder), "--record", str(folder / "natural.json"), "--quiet", *extra]


def _train(project: Path, folder: Path) -> subprocess.CompletedProcess:
    return subprocess.run(_train_cmd(project, folder), env=_env(), capture_output=True, text=True, timeout=300)


@pytest.fixture(scope="module")
def reference(tiny_project):
    """An uninterrupted training run (checkpoint bytes and record)."""
    folder = tiny_project / "reference"
    done = _train(tiny_project, folder)
    assert done.returncode == 0, done.stderr
    return folder


def test_identical_runs_give_byte_identical_checkpoints(tiny_project, reference):
    again = tiny_project / "again"
    done = _train(tiny_project, again)
    assert done.returncode == 0, done.stderr
    assert (again / "natural.pt").read_bytes() == (reference / "natural.pt").read_bytes()
    a, b = (json.loads((f / "natural.json").read_text()) for f in (again, reference))
    assert [h["loss"] for h in a["history"]] == [h["loss"] for h in b["history"]]
    umask = os.umask(0)
    os.umask(umask)
    assert (again / "natural.pt").stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


def test_sigkill_during_training_then_resume_is_bit_identical(tiny_project, reference):
    folder = tiny_project / "killed"
    partial = folder / "natural.partial.pt"
    proc = subprocess.Popen(_train_cmd(tiny_project, folder), env=_env(), start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        appeared = _wait_for(partial.exists, proc)
    finally:
        _kill(proc)
    assert appeared, "the training run never wrote a partial"
    if (folder / "natural.pt").exists():
        pytest.skip("the run finished before it could be killed (machine too fast for this test)")
    # a killed atomic write left a temporary file behind (simulated): the next run must remove it
    stray = folder / f".natural.pt.999999999.deadbeef{TEMP_SUFFIX}"
    stray.write_bytes(b"half a checkpoint")
    done = _train(tiny_project, folder)
    assert done.returncode == 0, done.stderr
    assert "resuming natural" in done.stderr and "removed" in done.stderr
    assert not stray.exists() and not partial.exists()
    assert (folder / "natural.pt").read_bytes() == (reference / "natural.pt").read_bytes()
    record = json.loads((folder / "natural.json").read_text())
    assert record["resumed_from_epoch"] >= 1 and record["epochs"] == 3


def test_partial_from_more_epochs_restarts_not_continues(tiny_project, reference, monkeypatch, capsys):
    """Killed in epoch 2 of 3, resumed with epochs 1: used to write a 2-epoch model labelled 1 epoch."""
    from smoothgeo.pipeline.train import cli

    folder = tiny_project / "fewer"
    real_save = ckpt.save_partial

    def save_then_die(path, *, epoch, **kwargs):
        real_save(path, epoch=epoch, **kwargs)
        if epoch == 2:
            raise KeyboardInterrupt

    monkeypatch.setattr(ckpt, "save_partial", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        cli(["--params", str(tiny_project / "params.yaml"), "--name", "natural", "--checkpoints", str(folder),
             "--record", str(folder / "natural.json"), "--quiet"])
    monkeypatch.setattr(ckpt, "save_partial", real_save)
    assert ckpt.load_partial(folder / "natural.partial.pt")["epoch"] == 2
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["train"]["scratch"]["natural"]["epochs"] = 1
    one_epoch = tiny_project / "one_epoch.yaml"
    one_epoch.write_text(yaml.safe_dump(params))
    capsys.readouterr()
    assert cli(["--params", str(one_epoch), "--name", "natural", "--checkpoints", str(folder),
                "--record", str(folder / "natural.json"), "--quiet"]) == 0
    err = capsys.readouterr().err
    assert "different configuration (epochs: 3 -> 1)" in err
    record = json.loads((folder / "natural.json").read_text())
    assert record["epochs"] == 1 and record["resumed_from_epoch"] == 0 and len(record["history"]) == 1
    # the same weights as a fresh 1-epoch run
    fresh = tiny_project / "fresh_one"
    assert cli(["--params", str(one_epoch), "--name", "natural", "--checkpoints", str(fresh),
                "--record", str(fresh / "natural.json"), "--quiet"]) == 0
    assert (folder / "natural.pt").read_bytes() == (fresh / "natural.pt").read_bytes()


# --------------------------------------------------------------------------------------- checkpoint files
def _small_checkpoint(path: Path) -> torch.nn.Module:
    torch.manual_seed(0)
    model = build_model("mlp", num_classes=3, in_features=64)
    ckpt.save_checkpoint(path, model, arch="mlp", num_classes=3, model_kwargs={"in_features": 64},
                         meta={"name": "m", "accuracy": 0.5})
    return model


def test_same_weights_same_bytes_whatever_the_temp_name(tmp_path):
    _small_checkpoint(tmp_path / "a.pt")
    _small_checkpoint(tmp_path / "b.pt")
    assert (tmp_path / "a.pt").read_bytes() == (tmp_path / "b.pt").read_bytes()
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_truncated_checkpoint_is_refused_with_file_and_fix(tmp_path):
    path = tmp_path / "natural.pt"
    _small_checkpoint(path)
    raw = path.read_bytes()
    for cut in (0, 100, len(raw) // 2, len(raw) - 10):
        path.write_bytes(raw[:cut])
        with pytest.raises(ckpt.CheckpointError, match=r"natural\.pt.*(corrupted or truncated).*dvc repro"):
            ckpt.load_checkpoint(path)


def test_bit_flipped_checkpoint_fails_its_integrity_check(tmp_path):
    """64 flipped bytes inside the weights used to load silently (16 weights changed by up to 1710)."""
    path = tmp_path / "natural.pt"
    model = _small_checkpoint(path)
    raw = bytearray(path.read_bytes())
    weight = model.state_dict()[next(iter(model.state_dict()))].numpy().tobytes()
    at = bytes(raw).find(weight[:256])
    assert at > 0
    for i in range(at + 64, at + 128):
        raw[i] ^= 0x5A
    path.write_bytes(bytes(raw))
    with pytest.raises(ckpt.CheckpointError, match=r"natural\.pt failed its integrity check.*delete .*natural\.pt"):
        ckpt.load_checkpoint(path)


def test_sigkill_during_checkpoint_write_keeps_old_file_and_next_write_cleans_up(tmp_path):
    path = tmp_path / "natural.pt"
    _small_checkpoint(path)
    before = path.read_bytes()
    script = textwrap.dedent(f"""
        import os, signal, torch
        from smoothgeo.store import checkpoints as ckpt
        from smoothgeo.store.atomic import atomic_path
        real = ckpt.atomic_write_bytes
        def die_half_way(path, data):
            with atomic_path(path) as tmp:
                with open(tmp, "wb") as fh:
                    fh.write(data[: len(data) // 2])
                    fh.flush()
                os.kill(os.getpid(), signal.SIGKILL)
        ckpt.atomic_write_bytes = die_half_way
        torch.manual_seed(1)
        from smoothgeo.core.models import build_model
        ckpt.save_checkpoint({str(path)!r}, build_model("mlp", num_classes=3, in_features=64), arch="mlp",
                             num_classes=3, model_kwargs={{"in_features": 64}})
    """)
    done = subprocess.run([sys.executable, "-c", script], env=_env(), capture_output=True, text=True, timeout=120)
    assert done.returncode == -signal.SIGKILL, done.stderr
    assert path.read_bytes() == before  # the old checkpoint, whole
    strays = list(tmp_path.glob(f".natural.pt.*{TEMP_SUFFIX}"))
    assert len(strays) == 1 and strays[0].stat().st_size > 0
    ckpt.load_checkpoint(path)
    _small_checkpoint(path)  # the next write of that file removes the dead writer's temporary file
    assert not list(tmp_path.glob(f"*{TEMP_SUFFIX}"))


def test_temp_files_of_live_writers_are_kept(tmp_path):
    live = tmp_path / f".x.pt.{os.getppid()}.0000{TEMP_SUFFIX}"
    dead = tmp_path / f".x.pt.999999999.0000{TEMP_SUFFIX}"
    live.write_bytes(b"1")
    dead.write_bytes(b"2")
    assert remove_stale_temps(tmp_path) == [dead]
    assert live.exists()


def test_atomic_files_get_ordinary_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        with atomic_path(tmp_path / "f.txt") as tmp:
            tmp.write_text("x")
    finally:
        os.umask(old)
    assert oct((tmp_path / "f.txt").stat().st_mode & 0o777) == oct(0o644)


# ----------------------------------------------------------------------------------- evaluation interrupted
# The one evaluation engine resumes inside the attack stage (partials per setting and shard), not inside
# core.evaluation.evaluate: a process killed mid-run and restarted is tested there, with real process death
# (tests/test_distributed.py::test_killed_rank_resumes: byte-identical outputs) and per setting
# (tests/test_attack_stage.py::test_resume_after_interruption_skips_finished_settings).


# ------------------------------------------------------------------------------------------ bad inputs
def _mlp():
    torch.manual_seed(0)
    return build_model("mlp", num_classes=3, in_features=2 * 4 * 4).eval()


def test_nan_pixels_are_refused_not_silently_dropped():
    x = torch.rand(3, 2, 4, 4)
    x[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or infinite values in 1 image\(s\) \(indices \[1\]\)"):
        check_images(x, torch.tensor([0, 1, 2]))
    with pytest.raises(ValueError, match="NaN or infinite"):
        saliency(_mlp(), x)


def test_labels_out_of_range_and_wrong_dtype_are_refused():
    x = torch.rand(3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"labels in \[0, 12\]; allowed: 0..2"):
        check_images(x, torch.tensor([0, 1, 12]), model=_mlp())
    with pytest.raises(ValueError, match=r"labels in \[-1, 1\]; allowed: >= 0"):
        check_images(x, torch.tensor([0, 1, -1]))
    with pytest.raises(ValueError, match="integer class labels"):
        check_images(x, torch.tensor([0.0, 1.0, 2.0]))
    with pytest.raises(ValueError, match=r"class index 12 but the model has 3 classes"):
        saliency(_mlp(), x, torch.tensor([0, 1, 12]))
    with pytest.raises(ValueError, match=r"class index -1"):
        integrated_gradients(_mlp(), x, torch.tensor([0, -1, 1]), steps=2)


def test_dtype_mismatches_get_clear_errors():
    model = _mlp()
    x = torch.rand(3, 2, 4, 4)
    with pytest.raises(ValueError, match=r"x is torch.float64 but the model's parameters are torch.float32"):
        check_images(x.double(), torch.tensor([0, 1, 2]), model=model)
    with pytest.raises(ValueError, match=r"x is torch.float64 but the model's parameters are torch.float32"):
        saliency(model, x.double())
    with pytest.raises(ValueError, match=r"float tensor.*uint8.*x.float\(\) / 255"):
        saliency(model, (x * 255).to(torch.uint8))
    assert check_images(x, torch.tensor([0, 1, 2], dtype=torch.int32), model=model).dtype == torch.int64


def test_all_zero_image_gives_counted_nan_metrics():
    from smoothgeo.core.attributions import map_of
    from smoothgeo.core.evaluation import compare_maps
    from smoothgeo.core.metrics import DegenerateMapWarning

    model = _mlp()
    x = torch.rand(2, 2, 4, 4)
    x[0] = 0.0
    m = map_of("SM", saliency(model, x, torch.tensor([0, 1])), x)
    with pytest.warns(DegenerateMapWarning, match="1 of 2 map pairs"):
        metrics = compare_maps(m, m.clone(), k=4)
    for name, values in metrics.items():
        assert np.isnan(values[0]), name
        assert np.isfinite(values[1]), name


# ---------------------------------------------------------------------------------- configuration errors
@pytest.mark.parametrize("content,args,match", [
    ("seed: 0\ntrain: {scratch: {natural: {recipe: natural\n", [], r"not valid YAML at line \d+, column \d+"),
    (None, ["--device", "gpu"], r"device 'gpu' is not valid; use auto, cpu, cuda, cuda:N or mps"),
    (None, ["--lr-typo"], None),
])
def test_configuration_errors_are_one_line(tiny_project, tmp_path, capsys, content, args, match):
    from smoothgeo.pipeline.train import cli

    params = tiny_project / "params.yaml"
    if content is not None:
        params = tmp_path / "broken.yaml"
        params.write_text(content)
    if match is None:  # argparse's own errors: exit 2 with usage, no traceback
        with pytest.raises(SystemExit) as exc:
            cli(["--params", str(params), "--name", "natural", *args])
        assert exc.value.code == 2
        return
    assert cli(["--params", str(params), "--name", "natural", "--checkpoints", str(tmp_path / "c"), *args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: ") and "Traceback" not in err
    assert __import__("re").search(match, err), err


def test_lr_five_is_rejected_from_the_command_line(tiny_project, tmp_path):
    params = yaml.safe_load((tiny_project / "params.yaml").read_text())
    params["train"]["defaults"]["lr"] = 5.0
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    done = subprocess.run(_train_cmd(tmp_path, tmp_path / "c"), env=_env(), capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip() == ("error: training parameter lr=5.0 is invalid; allowed: a number with 0 < lr <= 1 "
                                   "(Adam typically 1e-4 .. 1e-2, SGD up to about 0.5)")
    assert not (tmp_path / "c").exists()


def test_load_params_names_line_of_broken_yaml(tmp_path):
    path = tmp_path / "p.yaml"
    path.write_text("a: 1\nb: [1, 2\nc: 3\n")
    with pytest.raises(ValueError, match=r"p.yaml is not valid YAML at line \d+"):
        load_params(path)
    path.write_text("- 1\n- 2\n")
    with pytest.raises(ValueError, match="must hold a mapping"):
        load_params(path)


# ------------------------------------------------------------------------------------- repro.sh workspaces
needs_dvc = pytest.mark.skipif(shutil.which("dvc", path=os.pathsep.join([str(BIN), os.environ.get("PATH", "")]))
                               is None or shutil.which("flock") is None, reason="needs dvc and flock")

MINI_DVC = """\
stages:
  one:
    cmd: mkdir -p results && echo one >> ${log} && cat lib/code.txt params.yaml > results/one.txt
    deps: [lib/code.txt]
    params: [x]
    outs: [results/one.txt]
  two:
    cmd: echo two >> ${log} && sleep ${pause} && cp results/one.txt results/two.txt
    deps: [results/one.txt]
    outs: [results/two.txt]
"""


@pytest.fixture
def mini_repo(tmp_path):
    """A stand-in repository: this tree's scripts/repro.sh, a two-stage dvc.yaml, two profiles (no git)."""
    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "repro.sh", root / "scripts" / "repro.sh")
    (root / "lib").mkdir()
    (root / "lib" / "code.txt").write_text("code v1\n")
    (root / "dvc.yaml").write_text(MINI_DVC)
    (root / ".dvc").mkdir()
    (root / ".dvc" / "config").write_text("[core]\n    analytics = false\n")
    (root / "profiles").mkdir()
    for name, x in (("alpha", 1), ("beta", 2)):
        (root / "profiles" / f"{name}.yaml").write_text(f"x: {x}\npause: 0\nlog: {tmp_path / name}.log\n")
    (root / "params.yaml").write_text(f"x: 0\npause: 0\nlog: {tmp_path / 'default'}.log\n")
    return root


def _repro(root: Path, *args, **popen) -> subprocess.Popen:
    return subprocess.Popen(["bash", str(root / "scripts" / "repro.sh"), *args], cwd=root,
                            env=_env(SMOOTHGEO_NO_SETUP="1", DVC_NO_ANALYTICS="1"), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True, start_new_session=True, **popen)


def _run_repro(root: Path, *args) -> tuple[int, str]:
    proc = _repro(root, *args)
    out, _ = proc.communicate(timeout=300)
    return proc.returncode, out


def _calls(tmp_path, name) -> list[str]:
    log = tmp_path / f"{name}.log"
    return log.read_text().split() if log.exists() else []


def _tree(folder: Path) -> dict:
    return {str(p.relative_to(folder)): (p.is_symlink(), p.read_bytes() if p.is_file() and not p.is_symlink() else None)
            for p in sorted(folder.rglob("*")) if "tmp" not in p.parts}


@needs_dvc
def test_profile_workspaces_are_separate_and_rerun_nothing(mini_repo, tmp_path):
    rc, out = _run_repro(mini_repo, "alpha")
    assert rc == 0, out
    ws = mini_repo / "runs" / "alpha"
    assert (ws / "dvc.yaml").is_symlink() and (ws / "lib").is_symlink() and not (ws / "params.yaml").is_symlink()
    assert (ws / "results" / "two.txt").read_text() == "code v1\nx: 1\npause: 0\nlog: " + f"{tmp_path / 'alpha'}.log\n"
    assert not (mini_repo / "dvc.lock").exists() and not (mini_repo / "results").exists()
    assert _calls(tmp_path, "alpha") == ["one", "two"]
    rc, out = _run_repro(mini_repo, "alpha")  # nothing changed: nothing runs
    assert rc == 0 and _calls(tmp_path, "alpha") == ["one", "two"], out
    alpha_before = _tree(ws)
    rc, out = _run_repro(mini_repo, "beta")  # another profile never touches alpha's workspace
    assert rc == 0, out
    assert _tree(ws) == alpha_before and _calls(tmp_path, "beta") == ["one", "two"]
    # the repository's code is referenced, not copied: a code change reruns the stages that depend on it
    (mini_repo / "lib" / "code.txt").write_text("code v2\n")
    rc, out = _run_repro(mini_repo, "alpha")
    assert rc == 0 and _calls(tmp_path, "alpha") == ["one", "two", "one", "two"], out


@needs_dvc
def test_user_edits_to_workspace_params_are_kept(mini_repo, tmp_path):
    assert _run_repro(mini_repo, "alpha")[0] == 0
    params = mini_repo / "runs" / "alpha" / "params.yaml"
    edited = params.read_text().replace("x: 1", "x: 7")
    params.write_text(edited)
    (mini_repo / "profiles" / "alpha.yaml").write_text((mini_repo / "profiles" / "alpha.yaml").read_text() + "y: 1\n")
    rc, out = _run_repro(mini_repo, "alpha")
    assert rc == 0 and params.read_text() == edited and "has your edits" in out, out
    assert "x: 7" in (mini_repo / "runs" / "alpha" / "results" / "one.txt").read_text()
    # an unedited workspace follows a changed profile
    assert _run_repro(mini_repo, "beta")[0] == 0
    (mini_repo / "profiles" / "beta.yaml").write_text((mini_repo / "profiles" / "beta.yaml").read_text() + "y: 2\n")
    rc, out = _run_repro(mini_repo, "beta")
    assert rc == 0 and "y: 2" in (mini_repo / "runs" / "beta" / "params.yaml").read_text(), out


@needs_dvc
def test_second_concurrent_run_refuses_before_touching_anything(mini_repo, tmp_path):
    profile = mini_repo / "profiles" / "alpha.yaml"
    profile.write_text(profile.read_text().replace("pause: 0", "pause: 3"))
    first = _repro(mini_repo, "alpha")
    ws = mini_repo / "runs" / "alpha"
    assert _wait_for(lambda: "two" in _calls(tmp_path, "alpha"), first), first.communicate()[0]
    before = _tree(ws)
    rc, out = _run_repro(mini_repo, "alpha")
    assert rc == 75 and "another scripts/repro.sh run is using" in out and "nothing was changed" in out, out
    assert _tree(ws) == before
    out, _ = first.communicate(timeout=120)
    assert first.returncode == 0, out
    assert _calls(tmp_path, "alpha") == ["one", "two"]


@needs_dvc
def test_killed_run_resumes_with_unfinished_stages_only(mini_repo, tmp_path):
    profile = mini_repo / "profiles" / "alpha.yaml"
    profile.write_text(profile.read_text().replace("pause: 0", "pause: 30"))
    first = _repro(mini_repo, "alpha")
    try:
        assert _wait_for(lambda: "two" in _calls(tmp_path, "alpha"), first)
    finally:
        _kill(first)  # SIGKILL to the whole process group (script, dvc, the stage)
    ws = mini_repo / "runs" / "alpha"
    (ws / "params.yaml").write_text((ws / "params.yaml").read_text().replace("pause: 30", "pause: 0"))
    rc, out = _run_repro(mini_repo, "alpha")
    assert rc == 0, out
    assert _calls(tmp_path, "alpha") == ["one", "two", "two"]  # stage one finished before the kill: not rerun
    assert (ws / "results" / "two.txt").exists()


@needs_dvc
def test_output_through_a_workspace_link_is_refused(mini_repo, tmp_path):
    (mini_repo / "dvc.yaml").write_text(MINI_DVC + "  three:\n    cmd: echo bad > lib/out.txt\n    outs: [lib/out.txt]\n")
    rc, out = _run_repro(mini_repo, "alpha")
    assert rc != 0 and "three: lib/out.txt" in out, out
    assert not (mini_repo / "lib" / "out.txt").exists() and _calls(tmp_path, "alpha") == []
