"""Paper-scale profiles, their toy versions, and the synthetic stand-in data the toy versions run on."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from smoothgeo.data import datasets as data
from smoothgeo.pipeline import data as data_stage
from smoothgeo.pipeline import measure as measure_stage
from smoothgeo.pipeline import profiles
from smoothgeo.data import standins
from smoothgeo.core.geometry import logit_geometry
from smoothgeo.core.hessian import hessian_max_eig

ROOT = Path(__file__).resolve().parents[1]
PAPER = ["cifar10", "flowers", "imagenet"]


def load(name):
    with open(ROOT / "profiles" / f"{name}.yaml") as fh:
        return yaml.safe_load(fh)


pytestmark = pytest.mark.usefixtures("no_network")   # tests/conftest.py


@pytest.mark.parametrize("name", PAPER + ["smoke"])
def test_profiles_have_the_current_sections_and_consistent_names(name):
    p = load(name)
    default = yaml.safe_load(open(ROOT / "params.yaml"))
    for section in ("data", "train", "models", "comparisons", "attacks", "measures", "methods", "qualitative",
                    "toy_2d"):
        assert section in p, f"{name} lacks {section}"
    assert set(p["attacks"]["settings"]) == set(default["attacks"]["settings"]), "every attack setting, every profile"
    trained = set(p["train"]["scratch"]) | set(p["train"]["finetune"] or {})
    assert set(p["models"].values()) <= trained
    for group in p["comparisons"]["central"].values():
        assert set(group) <= set(p["models"])
    for key in ("transfer", "smoothing"):
        assert set(p["comparisons"][key]) <= set(p["models"])
    assert set(p["qualitative"]["models"]) <= set(p["models"])
    for setting in p["attacks"]["settings"].values():
        if isinstance(setting.get("models"), list):
            assert set(setting["models"]) <= set(p["models"]), setting
    eps = p["attacks"]["defaults"]["epsilons"][0]
    assert p["measures"]["bound_setting"] == p["qualitative"]["setting"] == f"SM-topk-eps{eps:g}"
    for entry in (p["train"]["finetune"] or {}).values():
        assert entry["init"] in trained


@pytest.mark.parametrize("name", PAPER)
def test_toy_keeps_what_decides_the_code_path_and_caps_sizes(name):
    full = load(name)
    toy = profiles.toy(full)
    assert toy["profile"] == f"{full['profile']}-toy"
    assert full["profile"] == name and "standin" not in full["data"]       # the source is not changed
    assert toy["data"]["dataset"] == full["data"]["dataset"] and toy["data"]["standin"] == profiles.TOY_STANDIN
    own = full.get("toy", {})
    seeds = own.get("seeds", profiles.TOY_SEEDS)
    steps = own.get("caps", {}).get("steps", profiles.TOY_CAPS["steps"])
    kept = {m for m in full["models"] if all(f"-s{k}" not in m for k in range(seeds, 10))}
    assert set(toy["models"]) == kept and kept            # the first seeds of every group
    assert set(toy["comparisons"]) == set(full["comparisons"])
    for group, seeds in full["comparisons"]["central"].items():
        assert toy["comparisons"]["central"][group] == [m for m in seeds if m in kept]
    assert toy["qualitative"]["models"] == full["qualitative"]["models"]
    for sname, setting in toy["attacks"]["settings"].items():
        if isinstance(setting.get("models"), list):
            assert set(setting["models"]) <= kept and setting["models"], sname
    assert toy["train"]["defaults"]["max_batches"] == 2
    assert toy["measures"]["power_iters"] == profiles.TOY_CAPS["power_iters"]
    assert toy["train"]["defaults"]["arch"] == full["train"]["defaults"]["arch"]
    assert set(toy["attacks"]["settings"]) == set(full["attacks"]["settings"])
    assert toy["attacks"]["defaults"]["k"] == full["attacks"]["defaults"]["k"]
    assert toy["attacks"]["defaults"]["epsilons"] == full["attacks"]["defaults"]["epsilons"]
    for run in {**toy["train"]["scratch"], **(toy["train"]["finetune"] or {})}.values():
        assert not run.get("pretrained")
        assert run.get("steps", 0) <= steps and run.get("ig_steps", 0) <= 2
    assert toy["attacks"]["n_images"] == toy["measures"]["n_images"] == 2
    assert toy["attacks"]["images"] == "all" and "images" not in full["attacks"]
    assert toy["attacks"]["defaults"]["steps"] == steps
    assert toy["attacks"]["settings"]["SG-noise"]["steps"] == 0                 # a zero stays zero
    assert len(toy["attacks"]["defaults"]["surrogates"]) == 2
    assert toy["methods"]["SG"]["samples"] == 2
    assert toy["data"]["test_limit"] <= 16 and toy["data"]["train_limit"] <= 16


def test_toy_refuses_a_profile_without_models(tmp_path):
    with pytest.raises(ValueError, match="'data', 'models' and 'attacks'"):
        profiles.toy({"data": {}})
    src = tmp_path / "p.yaml"
    src.write_text(yaml.safe_dump(load("cifar10")))
    out = tmp_path / "toy.yaml"
    profiles.main(["toy", str(src), str(out), "--name", "x-toy"])
    text = out.read_text()
    assert text.startswith("# GENERATED") and yaml.safe_load(text)["profile"] == "x-toy"


@pytest.mark.parametrize("name,shape,classes,splits", [
    ("cifar10", (3, 32, 32), 10, ("train", "test")),
    ("flowers102", (3, 224, 224), 102, ("train", "val", "test")),
    ("imagenet", (3, 224, 224), 1000, ("val",)),
    ("fashion_mnist", (1, 28, 28), 10, ("train", "test")),
])
def test_standins_load_through_the_real_loaders(tmp_path, name, shape, classes, splits):
    folder = standins.write_standin(name, tmp_path, n_train=12, n_test=6, seed=3)
    assert (folder / standins.MARKER).exists()
    for split in splits:
        kw = {"search_dirs": []} if name == "fashion_mnist" else {}
        x, y = data.load_tensors(name, split, root=tmp_path, download=False, **kw)
        assert tuple(x.shape[1:]) == shape and x.dtype == torch.float32
        assert 0 <= x.min() and x.max() <= 1 and x.std() > 0.05
        assert y.min() >= 0 and y.max() < classes
        expected = {"train": 12, "test": 6, "val": 6 if name == "imagenet" else 3}[split]
        assert len(y) == expected
        assert len(set(y.tolist())) == min(len(y), classes)    # balanced: every class once before repeats
    if name == "imagenet":
        assert len([d for d in folder.iterdir() if d.is_dir()]) == 1000
    # the same call writes the same data
    first = data.load_tensors(name, splits[-1], root=tmp_path, download=False,
                              **({"search_dirs": []} if name == "fashion_mnist" else {}))
    standins.write_standin(name, tmp_path, n_train=12, n_test=6, seed=3)
    again = data.load_tensors(name, splits[-1], root=tmp_path, download=False,
                              **({"search_dirs": []} if name == "fashion_mnist" else {}))
    assert torch.equal(first[0], again[0]) and torch.equal(first[1], again[1])


def test_standin_classes_differ_in_content():
    labels = np.array([0, 0, 1, 1])
    imgs = standins.standin_images(labels, size=16, channels=3, num_classes=10, seed=0).astype(float)
    within = np.abs(imgs[0] - imgs[1]).mean()
    between = np.abs(imgs[0] - imgs[2]).mean()
    assert between > within


def test_standin_never_overwrites_a_real_data_set(tmp_path):
    real = tmp_path / "cifar-10-batches-py"
    real.mkdir()
    (real / "data_batch_1").write_bytes(b"real data")
    with pytest.raises(FileExistsError, match="not a synthetic stand-in"):
        standins.write_standin("cifar10", tmp_path)
    assert (real / "data_batch_1").read_bytes() == b"real data"
    with pytest.raises(ValueError, match="unknown data set"):
        standins.write_standin("mnist", tmp_path)


def test_data_stage_standin_and_real(tmp_path, capsys):
    msg = data_stage.run({"dataset": "cifar10", "root": str(tmp_path), "standin": {"train": 5, "test": 4}})
    assert "SYNTHETIC" in msg
    assert len(data.load_dataset("cifar10", "test", root=tmp_path, download=False)) == 4
    with pytest.raises(ValueError, match="data.standin"):
        data_stage.run({"dataset": "cifar10", "root": str(tmp_path), "standin": 5})
    # without standin the real data set is required; offline, the message says where it must go
    with pytest.raises(FileNotFoundError, match="flowers-102"):
        data_stage.run({"dataset": "flowers102", "root": str(tmp_path)})
    params = tmp_path / "params.yaml"
    params.write_text(yaml.safe_dump({"data": {"dataset": "flowers102", "root": str(tmp_path / "none")}}))
    with pytest.raises(SystemExit) as exc:
        data_stage.main(["--params", str(params)])
    assert exc.value.code == 1 and "flowers102 not found" in capsys.readouterr().err


def tiny_net(classes=7):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 9), torch.nn.ReLU(),
                               torch.nn.Linear(9, classes)).double().eval()


def test_gradient_geometry_matches_the_full_jacobian_route():
    model = tiny_net()
    x = torch.rand(5, 3, 2, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 1, 2, 3, 4])
    lam = hessian_max_eig(model, x, method="exact")
    full = logit_geometry(model, x, y, lambda_max=lam)
    cheap = measure_stage.gradient_geometry(model, x, y, lambda_max=lam, chunk_size=2)
    for key, value in cheap.items():
        if key in ("relative_curvature", "lambda_max_fixed_scale"):
            assert torch.isnan(value).all()
        else:
            assert torch.allclose(value.double(), full[key].double(), rtol=1e-8, atol=1e-10), key
    # the power route the stage then uses agrees with the exact one on a ReLU net
    power = hessian_max_eig(model, x, method="power", iters=200, tol=1e-10)
    assert torch.allclose(power, lam, rtol=1e-4)


def test_measure_config_jacobian_switch():
    cfg = measure_stage.measure_config({"measures": {"jacobian": False, "power_iters": 5}})
    assert cfg["jacobian"] is False and cfg["power_iters"] == 5
    with pytest.raises(ValueError, match="needs the full logit Jacobian"):
        measure_stage.measure_config({"measures": {"jacobian": False, "hessian_method": "exact"}})
    with pytest.raises(ValueError, match="jacobian"):
        measure_stage.measure_config({"measures": {"jacobian": "no"}})


def test_a_profile_tunes_its_own_toy():
    full = load("flowers")
    toy = profiles.toy(full)
    assert "toy" not in toy and "toy" in full
    assert all("-s1" not in m for m in toy["models"])                 # seeds: 1
    assert toy["attacks"]["defaults"]["steps"] == 1                    # caps: {steps: 1}
    assert toy["measures"]["jacobian"] is False                        # set: {...}
    assert toy["measures"]["n_images"] == 2                            # the generic caps still apply
    with pytest.raises(ValueError, match="'toy' section"):
        profiles.toy({**full, "toy": {"unknown": 1}})


def test_dvc_yaml_parses_and_its_code_dependencies_exist():
    pipeline = yaml.safe_load((ROOT / "dvc.yaml").read_text())
    stages = pipeline["stages"]
    assert {"data", "train_scratch", "attack", "measure", "claims", "report"} <= set(stages)
    variables = {k: v for entry in pipeline.get("vars", []) for k, v in entry.items()}
    for name, stage in stages.items():
        body = stage.get("do", stage)
        items = [None]                       # a foreach over a vars list: check the path of every item
        if isinstance(stage.get("foreach"), str) and stage["foreach"].strip("${}") in variables:
            items = variables[stage["foreach"].strip("${}")]
        for dep in body.get("deps", []):
            if isinstance(dep, str) and dep.startswith(("lib/", "notebooks/")):
                for item in items:
                    path = dep if item is None else dep.replace("${item}", str(item))
                    assert "${" not in path and (ROOT / path).exists(), f"stage {name} depends on missing {path}"
