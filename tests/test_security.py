"""Issue 20: nothing injected, nothing silently wrong. One test (or a few) per finding, each built on a crafted
input (a crafted pickle, a crafted name, a NaN option, a crafted params file ...) that the code before the fix
accepted, crashed on, or got silently wrong."""
from __future__ import annotations

import io
import os
import pickle
import pickletools
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import nn

from smoothgeo.core import attacks, attributions, checks, geometry, metrics
from smoothgeo.data import containers, raw
from smoothgeo.data import datasets as data
from smoothgeo.data import standins
from smoothgeo.store import atomic, checkpoints as ckpt, names

ROOT = Path(__file__).resolve().parents[1]
REPRO = ROOT / "scripts" / "repro.sh"

pytestmark = pytest.mark.usefixtures("no_network")   # tests/conftest.py


# ------------------------------------------------------------------------------ 1. the CIFAR-10 unpickler
class _Reduce:
    """Pickles as ``callable(*args)`` then BUILD ``state``: how a crafted file calls a global."""

    def __init__(self, fn, args, state=None):
        self.fn, self.args, self.state = fn, args, state

    def __reduce__(self):
        return (self.fn, self.args) if self.state is None else (self.fn, self.args, self.state)


def _object_array_on_file_bytes(n: int = 4):
    """``numpy.ndarray((n,), dtype('O') with its object flags cleared by a BUILD, buffer=<file bytes>)``: an object
    array whose 'pointers' are bytes of the file. Touching its items dereferences them (SIGSEGV)."""
    dtype = _Reduce(np.dtype, ("O8", False, True), (3, "|", None, None, None, -1, -1, 0))
    return _Reduce(np.ndarray, ((n,), dtype, b"\x41" * (8 * n)))


def _write_batch(folder: Path, batch, name: str = "test_batch", protocol: int = 2) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_bytes(pickle.dumps(batch, protocol=protocol))
    return path


def _globals_called(raw: bytes) -> list[str]:
    """Names of the GLOBAL opcodes of a protocol-2 pickle (to check what a crafted file asks for)."""
    return [arg for op, arg, _ in pickletools.genops(raw) if op.name == "GLOBAL"]


def test_crafted_cifar_batch_with_an_object_array_is_refused_without_a_crash(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    batch = {b"data": np.zeros((4, 3072), dtype=np.uint8), b"labels": _object_array_on_file_bytes()}
    path = _write_batch(folder, batch)
    called = _globals_called(path.read_bytes())
    assert "numpy ndarray" in called and "numpy dtype" in called  # the file does call numpy.ndarray
    script = textwrap.dedent(f"""
        from smoothgeo.data import datasets
        try:
            datasets.load_dataset("cifar10", "test", root={str(tmp_path)!r}, download=False)
        except ValueError as exc:
            print("ValueError:", exc)
        else:
            print("loaded")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, f"the reader crashed (exit {run.returncode}): {run.stderr[-2000:]}"
    assert run.stdout.startswith("ValueError:") and str(path) in run.stdout
    assert "dtype" in run.stdout or "ndarray" in run.stdout


def test_cifar_reader_never_calls_numpy_ndarray_even_with_a_numeric_dtype(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    dtype = _Reduce(np.dtype, ("u1", False, True), (3, "|", None, None, None, -1, -1, 0))
    data_array = _Reduce(np.ndarray, ((4, 3072), dtype, bytes(4 * 3072)))
    path = _write_batch(folder, {b"data": data_array, b"labels": [0, 1, 2, 3]})
    with pytest.raises(ValueError, match="numpy.ndarray") as info:
        data.load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert str(path) in str(info.value)


@pytest.mark.parametrize("protocol", [2, 4, 5])
def test_real_cifar_batches_still_read_at_every_protocol(tmp_path, protocol):
    folder = tmp_path / "cifar-10-batches-py"
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, size=(6, 3072), dtype=np.uint8)
    labels = [3, 1, 4, 1, 5, 9]
    _write_batch(folder, {b"batch_label": b"testing batch 1 of 1", b"labels": labels, b"data": pixels,
                          b"filenames": [b"x.png"] * 6}, protocol=protocol)
    ds = data.load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert torch.equal(ds.images, torch.from_numpy(pixels.reshape(-1, 3, 32, 32)))
    assert ds.labels.tolist() == labels


def test_cifar_dtypes_other_than_numeric_are_refused_before_an_array_exists(tmp_path):
    folder = tmp_path / "cifar-10-batches-py"
    _write_batch(folder, {b"data": np.zeros((2, 3072), np.uint8), b"labels": np.array(["a", "b"], dtype=object)})
    with pytest.raises(ValueError, match="refusing dtype"):
        data.load_dataset("cifar10", "test", root=tmp_path, download=False)


# ------------------------------------------------------------------------------ 4. CIFAR non-uint8, Flowers ids
@pytest.mark.parametrize("dtype", [np.float64, np.int64, np.uint16])
def test_cifar_data_that_is_not_uint8_is_refused_not_cast(tmp_path, dtype):
    folder = tmp_path / "cifar-10-batches-py"
    path = _write_batch(folder, {b"data": np.full((2, 3072), 300, dtype=dtype), b"labels": [0, 1]})
    with pytest.raises(ValueError, match="refusing to cast") as info:
        data.load_dataset("cifar10", "test", root=tmp_path, download=False)
    assert str(path) in str(info.value)


def _flowers(tmp_path) -> Path:
    return standins.write_standin("flowers102", tmp_path, n_train=3, n_test=2, seed=0)


def _savemat(path: Path, **payload) -> None:
    from scipy.io import savemat

    buf = io.BytesIO()
    savemat(buf, payload)
    path.write_bytes(buf.getvalue())


def test_flowers_ids_outside_the_image_list_are_refused(tmp_path):
    folder = _flowers(tmp_path)   # 3 train + 1 val + 2 test images, ids 1..6
    assert len(data.load_dataset("flowers102", "train", root=tmp_path, download=False, image_size=32)) == 3
    _savemat(folder / "setid.mat", trnid=np.array([[1, 2, 9]]), valid=np.array([[4]]), tstid=np.array([[5, 6]]))
    with pytest.raises(ValueError, match="image ids in"):
        data.load_dataset("flowers102", "train", root=tmp_path, download=False, image_size=32)


def test_flowers_labels_that_do_not_match_the_images_are_refused(tmp_path):
    folder = _flowers(tmp_path)
    _savemat(folder / "imagelabels.mat", labels=np.arange(1, 11)[None, :])  # 10 labels for 6 images
    with pytest.raises(ValueError, match="holds 6 image_"):
        data.load_dataset("flowers102", "test", root=tmp_path, download=False, image_size=32)
    _savemat(folder / "imagelabels.mat", labels=np.array([[1, 2, 3, 4, 5, 103]]))  # class 103 of 102
    with pytest.raises(ValueError, match="labels are 1..102"):
        data.load_dataset("flowers102", "test", root=tmp_path, download=False, image_size=32)


def test_flowers_listed_image_missing_is_refused(tmp_path):
    folder = _flowers(tmp_path)
    (folder / "jpg" / "image_00005.jpg").rename(folder / "jpg" / "image_00099.jpg")   # count kept, id 5 gone
    with pytest.raises(ValueError, match="not in"):
        data.load_dataset("flowers102", "test", root=tmp_path, download=False, image_size=32)


# ------------------------------------------------------------------------------ 3. image formats
def test_image_files_decode_only_jpeg_and_png(tmp_path):
    from PIL import Image

    rgb = np.full((40, 40, 3), 120, dtype=np.uint8)
    Image.fromarray(rgb).save(tmp_path / "ok.jpg", format="JPEG")
    Image.fromarray(rgb).save(tmp_path / "ok.png", format="PNG")
    Image.fromarray(rgb).save(tmp_path / "bitmap.jpg", format="BMP")          # another decoder behind .jpg
    (tmp_path / "poster.jpg").write_bytes(b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n")
    ds = containers.ImageFiles([tmp_path / "ok.jpg", tmp_path / "ok.png", tmp_path / "bitmap.jpg",
                          tmp_path / "poster.jpg"], [0, 1, 2, 3], size=32)
    assert containers.IMAGE_FORMATS == ("JPEG", "PNG") and ds.formats == containers.IMAGE_FORMATS
    assert ds[0][0].shape == ds[1][0].shape == (3, 32, 32)
    for i, name in ((2, "bitmap.jpg"), (3, "poster.jpg")):   # EPS never reaches Ghostscript
        with pytest.raises(ValueError, match="JPEG, PNG") as info:
            ds[i]
        assert str(tmp_path / name) in str(info.value)


def test_image_files_need_one_label_per_file(tmp_path):
    with pytest.raises(ValueError, match="one per file"):
        containers.ImageFiles([tmp_path / "a.jpg", tmp_path / "b.jpg"], [0])


# ------------------------------------------------------------------------------ 2. one name rule
GOOD_NAMES = ["natural-s0", "natural-s0+softplus3", "wd5e-4-s0", "SM-topk", "a", "0.1", "x_y.z+w-v", "a..b"]
BAD_NAMES = ["", "../evil", "..", ".hidden", "/abs/path", "a/b", "a b", "a;rm -rf x", "-x", "+x", "_x", "a$b",
             "a`b`", "a\nb", "é", 3, None]


@pytest.mark.parametrize("name", GOOD_NAMES)
def test_the_name_rule_accepts(name):
    assert names.check_name(name, "models.x") == name


@pytest.mark.parametrize("name", BAD_NAMES)
def test_the_name_rule_refuses_naming_the_key(name):
    with pytest.raises(ValueError, match=r"models\.x=") as info:
        names.check_name(name, "models.x")
    assert "not a valid name" in str(info.value)


def _params_text(**sections) -> str:
    import yaml

    base = {"seed": 0, "train": {"defaults": {"epochs": 1, "lr": 0.001, "batch_size": 8},
                                 "scratch": {"natural-s0": {"recipe": "natural"}}, "finetune": {}},
            "models": {"natural-s0": "natural-s0"}, "comparisons": {"transfer": ["natural-s0"]}}
    for key, value in sections.items():
        base[key] = value
    return yaml.safe_dump(base)


@pytest.mark.parametrize("section, value, key", [
    ("models", {"../evil": "natural-s0"}, "models.../evil"),
    ("models", {"natural-s0": "/abs/ckpt"}, "models.natural-s0"),
    ("models", {"x; touch pwned": "natural-s0"}, "models.x; touch pwned"),
    ("train", {"scratch": {"a b": {"recipe": "natural"}}}, "train.scratch.a b"),
    ("train", {"finetune": {"ft": {"recipe": "natural", "init": "../natural-s0"}}}, "train.finetune.ft.init"),
    ("comparisons", {"central": {"natural": ["natural-s0", "$(id)"]}}, "comparisons.central.natural[1]"),
    ("attacks", {"settings": {"-x": {"method": "SM", "kind": "topk"}}}, "attacks.settings.-x"),
])
def test_load_params_refuses_bad_names_naming_the_key(tmp_path, section, value, key):
    path = tmp_path / "params.yaml"
    path.write_text(_params_text(**{section: value}))
    with pytest.raises(atomic.ConfigError) as info:
        atomic.load_params(path)
    assert f"{key}=" in str(info.value) and str(path) in str(info.value)


def test_the_repository_params_and_profiles_follow_the_name_rule():
    for path in [ROOT / "params.yaml", *sorted((ROOT / "profiles").glob("*.yaml"))]:
        atomic.load_params(path)


def test_train_resolve_config_and_cli_refuse_bad_names(tmp_path):
    from smoothgeo.pipeline import train

    params = {"train": {"defaults": {"epochs": 1, "lr": 0.001, "batch_size": 8, "recipe": "natural"},
                        "scratch": {"../x": {}}}}
    with pytest.raises(ValueError, match=r"--name='\.\./x'"):
        train.resolve_config(params, "../x")
    with pytest.raises(ValueError, match=r"train\.scratch\.\.\./x="):
        train.resolve_config({"train": {"scratch": {"../x": {}, "ok": {}}}}, "ok")
    with pytest.raises(SystemExit) as info:
        train.main(["--params", str(tmp_path / "missing.yaml"), "--name", "../../etc/x"])
    assert info.value.code == 2


@pytest.mark.parametrize("module", ["smoothgeo.pipeline.attack", "smoothgeo.pipeline.measure"])
def test_stage_clis_refuse_bad_model_names(tmp_path, module):
    run = subprocess.run([sys.executable, "-m", module, "--params", str(tmp_path / "none.yaml"), "--model",
                          "../../checkpoints/victim"], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert run.returncode == 2 and "--model='../../checkpoints/victim' is not a valid name" in run.stderr


def test_attack_config_refuses_bad_setting_and_model_names():
    from smoothgeo.pipeline import attack_config

    params = {"attacks": {"n_images": 2, "settings": {"SM topk": {"method": "SM", "kind": "topk"}}}}
    with pytest.raises(ValueError, match=r"attacks\.settings\.SM topk="):
        attack_config.check_params(params)
    params["attacks"]["settings"] = {"SM-topk": {"method": "SM", "kind": "topk"}}
    assert attack_config.check_params(params)
    with pytest.raises(ValueError, match=r"model='\.\./x'"):
        attack_config.resolve_settings(params, "../x")


def _repro_copy(tmp_path) -> Path:
    (tmp_path / "scripts").mkdir()
    shutil.copy(REPRO, tmp_path / "scripts" / "repro.sh")
    return tmp_path / "scripts" / "repro.sh"


@pytest.mark.parametrize("profile", ["a;touch pwned", "a b", "-x", ".hidden", "/abs", "../up", "a$b", "a\nb"])
def test_repro_sh_refuses_profile_names_outside_the_rule(tmp_path, profile):
    script = _repro_copy(tmp_path)
    run = subprocess.run(["bash", str(script), profile], capture_output=True, text=True, timeout=60,
                         env={**os.environ, "SMOOTHGEO_NO_SETUP": "1"}, cwd=tmp_path)
    assert run.returncode == 2 and "invalid profile name" in run.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scripts"]   # nothing was created


def _repro_output_check(script: Path) -> str:
    text = script.read_text()
    start = text.index("python - <<'EOF'\n") + len("python - <<'EOF'\n")
    return text[start:text.index("\nEOF\n", start)]


@pytest.mark.parametrize("out", ["/tmp/smoothgeo-outside/raw", "data/../../outside"])
def test_repro_sh_refuses_stage_outputs_outside_the_workspace(tmp_path, out):
    ws = tmp_path / "ws"
    ws.mkdir()
    subprocess.run(["git", "init", "-q"], cwd=ws, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=ws, check=True)
    (ws / "params.yaml").write_text(f"data:\n  root: {out}\n")
    (ws / "dvc.yaml").write_text("stages:\n  data:\n    cmd: 'true'\n    params: [data]\n    outs:\n"
                                 "      - ${data.root}\n")
    check = subprocess.run([sys.executable, "-c", _repro_output_check(REPRO)], capture_output=True, text=True,
                           cwd=ws, timeout=120)
    assert check.returncode != 0 and "outside the workspace" in check.stderr and out in check.stderr


# ------------------------------------------------------------------------------ 5. eval mode
def _bn_model(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Conv2d(1, 3, 3, padding=1), nn.BatchNorm2d(3), nn.ReLU(), nn.Dropout(0.5),
                         nn.Flatten(), nn.Linear(3 * 16, 4))


@pytest.mark.parametrize("method, options", [("SM", {}), ("IG", {"steps": 3}), ("SG", {"samples": 3}),
                                             ("UG", {"samples": 3})])
def test_attributions_run_in_eval_mode_and_restore_the_mode(method, options):
    model = _bn_model()
    model.train()
    model[3].eval()  # a submodule with its own mode keeps it
    bn = model[1]
    stats = (bn.running_mean.clone(), bn.running_var.clone(), int(bn.num_batches_tracked))
    x = torch.rand(5, 1, 4, 4, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 0])
    gen = lambda: attributions.make_generator("cpu", 7)  # noqa: E731
    batch = attributions.attribute(method, model, x, y, generator=gen(), **options)
    assert model.training and not model[3].training and model[1].training
    assert torch.equal(bn.running_mean, stats[0]) and torch.equal(bn.running_var, stats[1])
    assert int(bn.num_batches_tracked) == stats[2]
    reference = attributions.attribute(method, model.eval(), x, y, generator=gen(), **options)
    assert torch.equal(batch, reference)
    if method in ("SM", "IG"):  # rows are independent: one image alone gives its row
        alone = attributions.attribute(method, model.train(), x[2:3], y[2:3], generator=gen(), **options)
        torch.testing.assert_close(alone, batch[2:3])


def test_resolve_target_predicts_in_eval_mode():
    model = _bn_model().train()
    bn = model[1]
    before = bn.running_mean.clone()
    attributions.resolve_target(model, torch.rand(4, 1, 4, 4), None)
    assert torch.equal(bn.running_mean, before) and model.training


def test_one_eval_mode_context_manager():
    assert attacks.eval_mode is checks.eval_mode and geometry.evaluating is checks.eval_mode
    model = _bn_model().train()
    model[1].eval()
    with geometry.evaluating(model) as m:
        assert m is model and not any(sub.training for sub in model.modules())
    assert model.training and not model[1].training and model[0].training   # each submodule's own mode


# ------------------------------------------------------------------------------ 6. metrics
def _int_maps():
    g = torch.Generator().manual_seed(3)
    return torch.randint(0, 50, (3, 5, 5), generator=g), torch.randint(0, 50, (3, 5, 5), generator=g)


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
def test_metrics_on_integer_maps_equal_those_on_float_maps(name):
    a, b = _int_maps()
    fn = metrics.METRICS[name]
    args = (10,) if name in ("topk", "lens_topk") else ()
    on_int, on_float = fn(a, b, *args), fn(a.double(), b.double(), *args)
    assert on_int.is_floating_point() and on_int.dtype == on_float.dtype and torch.equal(on_int, on_float)
    if name in ("kendall", "spearman"):
        assert (on_int != 0).all()   # cast back to int64 they came out 0
    assert torch.equal(metrics.kendall_tau(a, b, route="quadratic"), metrics.kendall_tau(a.double(), b.double(),
                                                                                          route="quadratic"))


def test_mass_center_of_integer_and_bool_maps():
    m = torch.zeros(1, 3, 3, dtype=torch.long)
    m[0, 2, 1] = 4
    assert metrics.mass_center(m).tolist() == [[2.0, 1.0]]
    assert metrics.mass_center(m.bool()).tolist() == [[2.0, 1.0]]


@pytest.mark.parametrize("name", sorted(metrics.METRICS))
@pytest.mark.parametrize("side", [4, 9])   # 16 pixels: Kendall's quadratic route; 81: the fast one
def test_metrics_on_an_empty_batch_give_an_empty_result(name, side):
    a = torch.rand(0, side, side)
    args = (3,) if name in ("topk", "lens_topk") else ()
    out = metrics.METRICS[name](a, a.clone(), *args)
    assert out.shape == (0,)
    assert metrics.kendall_tau(a, a.clone(), route="quadratic").shape == (0,)


def test_maps_without_pixels_are_refused():
    with pytest.raises(ValueError, match="at least one pixel"):
        metrics.kendall_tau(torch.rand(2, 0, 3), torch.rand(2, 0, 3))
    with pytest.raises(ValueError, match="real"):
        metrics.cosine_distance(torch.rand(2, 3, 3) * 1j, torch.rand(2, 3, 3) * 1j)


# ------------------------------------------------------------------------------ 7. NaN and infinite options
def _mlp():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 3))


BAD = [float("nan"), float("inf"), float("-inf")]


@pytest.mark.parametrize("value", BAD)
def test_attribution_options_that_are_not_finite_are_refused(value):
    model, x = _mlp(), torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match="noise_level"):
        attributions.smoothgrad(model, x, None, noise_level=value, samples=2)
    with pytest.raises(ValueError, match="radius"):
        attributions.uniform_gradient(model, x, None, radius=value, samples=2)
    with pytest.raises(ValueError, match="IG baseline"):
        attributions.integrated_gradients(model, x, None, baseline=value, steps=2)
    baseline = torch.zeros_like(x)
    baseline[0, 0, 0, 0] = value
    with pytest.raises(ValueError, match="IG baseline"):
        attributions.integrated_gradients(model, x, None, baseline=baseline, steps=2)
    with pytest.raises(ValueError, match="IG steps"):
        attributions.integrated_gradients(model, x, None, steps=value)
    with pytest.raises(ValueError, match="chunk_size"):
        attributions.integrated_gradients(model, x, None, steps=2, chunk_size=value)


@pytest.mark.parametrize("value", BAD)
@pytest.mark.parametrize("option", ["step_size", "epsilon", "beta", "map_weight", "output_weight"])
def test_attack_options_that_are_not_finite_are_refused(option, value):
    model, x = _mlp(), torch.rand(2, 1, 4, 4)
    y = model(x).argmax(1)
    with pytest.raises(ValueError, match=option):
        attacks.attack(model, x, y, steps=1, k=4, **{option: value})


@pytest.mark.parametrize("value", BAD)
def test_target_map_that_is_not_finite_is_refused(value):
    model, x = _mlp(), torch.rand(2, 1, 4, 4)
    target = torch.rand(4, 4)
    target[1, 2] = value
    with pytest.raises(ValueError, match="target_map"):
        attacks.attack(model, x, model(x).argmax(1), kind="targeted", target_map=target, steps=1, k=4)


@pytest.mark.parametrize("option, value", [("steps", float("inf")), ("restarts", float("nan")),
                                           ("k", float("inf")), ("batch_size", float("inf"))])
def test_attack_integer_options_that_are_not_finite_are_refused(option, value):
    model, x = _mlp(), torch.rand(2, 1, 4, 4)
    with pytest.raises(ValueError, match=option):
        attacks.attack(model, x, model(x).argmax(1), **{"steps": 1, "k": 4, option: value})


# ------------------------------------------------------------------------------ 8. notebook sync, YAML keys
def _notebook(path: Path, sections: str) -> Path:
    import nbformat

    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(f"# sections: {sections}\ns = None")
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("print(s)")]
    nbformat.write(nb, str(path))
    return path


def _cell(path: Path) -> str:
    import nbformat

    return nbformat.read(str(path), as_version=4).cells[0].source


def test_sync_writes_valid_python_for_inf_nan_and_dates(tmp_path):
    from smoothgeo.pipeline import notebook_params

    nb = _notebook(tmp_path / "n.ipynb", "s")
    params = tmp_path / "params.yaml"
    params.write_text("s: {big: .inf, small: -.inf, odd: .nan, day: 2020-12-06, when: 2020-12-06 10:30:00, "
                      "list: [1, .inf]}\n")
    assert notebook_params.sync([nb], params=params) == [nb]
    env: dict = {}
    exec(compile(_cell(nb), "cell", "exec"), env)   # NameError (inf, nan, datetime) before
    s = env["s"]
    assert s["big"] == float("inf") and s["small"] == float("-inf") and s["odd"] != s["odd"]
    assert s["day"] == "2020-12-06" and s["when"] == "2020-12-06 10:30:00" and s["list"] == [1, float("inf")]
    # what papermill injects for the same values (it passes dates as their str())
    from papermill.translators import PythonTranslator

    injected: dict = {}
    exec(PythonTranslator.codify(notebook_params.select_params(atomic.load_params(params), ["s"])), injected)
    assert {k: v for k, v in injected["s"].items() if k != "odd"} == {k: v for k, v in s.items() if k != "odd"}


def test_sync_refuses_non_string_keys_naming_them(tmp_path):
    from smoothgeo.pipeline import notebook_params

    nb = _notebook(tmp_path / "n.ipynb", "s")
    before = nb.read_bytes()
    params = tmp_path / "params.yaml"
    params.write_text("s: {methods: {1: SM, 0.5: IG}}\n")
    with pytest.raises(ValueError, match=r"s\.methods\.1 is a int, not a string"):
        notebook_params.sync([nb], params=params)
    assert nb.read_bytes() == before


def test_load_params_refuses_duplicate_keys_naming_the_key(tmp_path):
    path = tmp_path / "params.yaml"
    path.write_text("seed: 0\nattacks:\n  n_images: 40\n  batch_size: null\n  n_images: 4000\n")
    with pytest.raises(atomic.ConfigError, match=r"duplicate key 'n_images' \(first at line 3\)") as info:
        atomic.load_params(path)
    assert "line 5" in str(info.value)
    path.write_text("base: &b {lr: 0.1, epochs: 1}\nrun:\n  <<: *b\n  lr: 0.2\n")   # a merge may be overridden
    assert atomic.load_params(path)["run"] == {"lr": 0.2, "epochs": 1}


def test_sync_writes_the_notebook_atomically(tmp_path, monkeypatch):
    import nbformat

    from smoothgeo.pipeline import notebook_params

    nb = _notebook(tmp_path / "n.ipynb", "s")
    before = nb.read_bytes()
    params = tmp_path / "params.yaml"
    params.write_text("s: 1\n")
    real_write = nbformat.write

    def write_half_then_die(node, fp, *args, **kwargs):
        buf = io.StringIO()
        real_write(node, buf, *args, **kwargs)
        text = buf.getvalue()
        if isinstance(fp, (str, os.PathLike)):
            Path(fp).write_text(text[: len(text) // 2])
        else:
            fp.write(text[: len(text) // 2])
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr(nbformat, "write", write_half_then_die)
    with pytest.raises(KeyboardInterrupt):
        notebook_params.sync([nb], params=params)
    assert nb.read_bytes() == before
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(atomic.TEMP_SUFFIX)] == []


def test_run_never_leaves_a_half_written_output(tmp_path, monkeypatch):
    import papermill

    from smoothgeo.pipeline import notebook

    nb = _notebook(tmp_path / "n.ipynb", "s")
    params = tmp_path / "params.yaml"
    params.write_text("s: 1\n")
    out = tmp_path / "out" / "n.ipynb"

    def killed(input_path, output_path, **kwargs):
        Path(output_path).write_text('{"cells": [')   # papermill rewrites its output after every cell
        raise KeyboardInterrupt("killed while executing")

    monkeypatch.setattr(papermill, "execute_notebook", killed)
    with pytest.raises(KeyboardInterrupt):
        notebook.run(nb, out, params=params, root=tmp_path)
    assert not out.exists() and list(out.parent.iterdir()) == []


# ------------------------------------------------------------------------------ 9. checkpoints
def _mlp_checkpoint(path: Path, **changes) -> Path:
    model = ckpt.build_model("mlp", num_classes=2, in_features=4, hidden=(3,))
    ckpt.save_checkpoint(path, model, arch="mlp", num_classes=2, model_kwargs={"in_features": 4, "hidden": (3,)})
    if changes:
        obj = torch.load(path, weights_only=True)
        obj.update(changes)
        ckpt._save(path, {k: v for k, v in obj.items() if k != "sha256"})   # a valid digest of the new content
    return path


def test_checkpoint_without_a_digest_is_refused_with_how_to_recreate_it(tmp_path):
    path = _mlp_checkpoint(tmp_path / "old.pt")
    obj = torch.load(path, weights_only=True)
    del obj["sha256"]
    obj["format"] = 1
    torch.save(obj, path)
    with pytest.raises(ckpt.CheckpointError, match="without a sha256 digest") as info:
        ckpt.load_checkpoint(path)
    assert "re-create it with `dvc repro`" in str(info.value) and "--name old" in str(info.value)


@pytest.mark.parametrize("kwargs, match", [
    ({"in_features": 4, "hidden": (3,), "evil": 1}, "does not take"),
    ({"in_features": 4, "hidden": ({"x": 1},)}, "only numbers"),
])
def test_checkpoint_model_kwargs_are_checked_against_the_architecture(tmp_path, kwargs, match):
    path = _mlp_checkpoint(tmp_path / "m.pt", model_kwargs=kwargs)
    with pytest.raises(ckpt.CheckpointError, match=match):
        ckpt.load_checkpoint(path)


def test_checkpoint_model_kwargs_cannot_load_or_download_other_weights(tmp_path):
    assert ckpt.allowed_model_kwargs("resnet50") == {"pretrained", "weights_path"}
    assert ckpt.allowed_model_kwargs("fashion_small") == {"in_channels", "image_size", "widths", "hidden"}
    for kwargs in ({"weights_path": str(tmp_path / "other.pth")}, {"pretrained": True}):
        with pytest.raises(ValueError, match="never loads or downloads"):
            ckpt.check_model_kwargs("resnet50", kwargs)
    assert ckpt.check_model_kwargs("resnet50", {"pretrained": False}) == {"pretrained": False}


def test_valid_checkpoints_still_load(tmp_path):
    model, meta = ckpt.load_checkpoint(_mlp_checkpoint(tmp_path / "ok.pt"))
    assert meta["model_kwargs"] == {"in_features": 4, "hidden": (3,)} and not model.training


def test_pyproject_pins_torch_with_the_safe_weights_only_loader():
    import tomllib

    from packaging.requirements import Requirement
    from packaging.version import Version

    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    torch_req = [Requirement(d) for d in deps if Requirement(d).name == "torch"][0]
    assert not torch_req.specifier.contains(Version("2.5.1")) and torch_req.specifier.contains(Version("2.6.0"))


# ------------------------------------------------------------------------------ 10. repro.sh, stand-in marker
def test_repro_sh_reports_a_missing_flock_as_such(tmp_path):
    script = _repro_copy(tmp_path)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("dirname", "mkdir"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    run = subprocess.run(["/bin/bash", str(script)], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                         env={"PATH": str(bin_dir), "SMOOTHGEO_NO_SETUP": "1"})
    assert run.returncode == 69 and "'flock' command is not installed" in run.stderr
    assert "another scripts/repro.sh run" not in run.stderr


def test_repro_sh_links_entries_whose_names_have_spaces(tmp_path):
    root = tmp_path / "repo"
    (root / "profiles").mkdir(parents=True)
    _repro_copy(root)
    (root / "profiles" / "p.yaml").write_text("models: {}\n")
    (root / "dvc.yaml").write_text("stages: {}\n")
    (root / "my notes.txt").write_text("kept whole\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "dvc").write_text("#!/bin/sh\necho fake dvc \"$@\"\n")
    (fake / "dvc").chmod(0o755)
    env = {**os.environ, "SMOOTHGEO_NO_SETUP": "1", "PATH": f"{fake}{os.pathsep}{os.environ['PATH']}"}
    run = subprocess.run(["bash", "scripts/repro.sh", "p"], capture_output=True, text=True, timeout=180, cwd=root,
                         env=env)
    ws = root / "runs" / "p"
    assert (ws / "my notes.txt").is_symlink() and (ws / "my notes.txt").read_text() == "kept whole\n", run.stderr
    assert not (ws / "my").is_symlink() and not (ws / "notes.txt").is_symlink()


def test_an_interrupted_standin_is_never_taken_as_complete(tmp_path, monkeypatch):
    real = standins._cifar

    def interrupted(folder, n_train, n_test, seed):
        real(folder, n_train, n_test, seed)          # every batch written ...
        raise KeyboardInterrupt("killed before the marker's final text")   # ... but the run dies here

    monkeypatch.setattr(standins, "_cifar", interrupted)
    with pytest.raises(KeyboardInterrupt):
        standins.write_standin("cifar10", tmp_path, n_train=5, n_test=3)
    folder = tmp_path / "cifar-10-batches-py"
    assert (folder / standins.MARKER).read_text().startswith(raw.STANDIN_INCOMPLETE)
    with pytest.raises(ValueError, match="writing was interrupted"):
        data.load_dataset("cifar10", "test", root=tmp_path, download=False)
    monkeypatch.setattr(standins, "_cifar", real)
    standins.write_standin("cifar10", tmp_path, n_train=5, n_test=3)   # a stand-in, so it is rewritten
    assert not (folder / standins.MARKER).read_text().startswith(raw.STANDIN_INCOMPLETE)
    assert len(data.load_dataset("cifar10", "test", root=tmp_path, download=False)) == 3
