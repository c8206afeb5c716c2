"""Tables and figures are deterministic; the README block is replaced in place; the zoo helpers work."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from smoothgeo import experiments as ex  # noqa: E402
from smoothgeo.checkpoints import save_checkpoint  # noqa: E402
from smoothgeo.models import MLP  # noqa: E402
from smoothgeo.report import repo_root, save_figure, save_table  # noqa: E402
from smoothgeo.summary import update_readme  # noqa: E402


def test_save_table_writes_three_formats(tmp_path):
    frame = pd.DataFrame({"model": ["a", "b"], "topk": [0.123456, 0.5]})
    save_table(frame, tmp_path, "t", caption="A table")
    assert pd.read_csv(tmp_path / "t.csv").equals(frame)
    assert "0.123" in (tmp_path / "t.md").read_text()
    tex = (tmp_path / "t.tex").read_text()
    assert "\\begin{table}" in tex and "0.123" in tex and "tab:t" in tex


def test_figures_are_byte_identical_across_saves(tmp_path):
    def draw(folder):
        fig, ax = plt.subplots()
        ax.plot([0, 1], [1, 0])
        save_figure(fig, folder, "f")
        plt.close(fig)

    draw(tmp_path / "a")
    draw(tmp_path / "b")
    for ext in ("png", "pdf"):
        assert (tmp_path / "a" / f"f.{ext}").read_bytes() == (tmp_path / "b" / f"f.{ext}").read_bytes()
    assert b"CreationDate" not in (tmp_path / "a" / "f.pdf").read_bytes()


def test_repo_root_finds_dvc_yaml(tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    (tmp_path / "notebooks").mkdir()
    assert repo_root(tmp_path / "notebooks") == tmp_path
    with pytest.raises(FileNotFoundError, match="no dvc.yaml"):
        repo_root("/")


def test_zoo_loads_checkpoints_and_adds_softplus_copies(tmp_path):
    torch.manual_seed(0)
    model = MLP(in_features=4, hidden=(8,), num_classes=3)
    save_checkpoint(tmp_path / "natural.pt", model, arch="mlp", num_classes=3, meta={"recipe": "natural"},
                    model_kwargs={"in_features": 4, "hidden": (8,)})
    zoo = ex.load_zoo(["natural"], checkpoints=tmp_path, device="cpu", attack_beta=7.0, softplus_betas=[2.0])
    assert list(zoo) == ["natural", "natural+softplus2"]
    assert zoo["natural"].attack_beta == 7.0 and zoo["natural+softplus2"].attack_beta is None
    x = torch.rand(5, 4)
    torch.testing.assert_close(zoo["natural"].model(x), model(x))
    assert ex.test_accuracy(zoo["natural"].model, x, model(x).argmax(1), batch_size=2) == 1.0


def test_training_records_give_seconds_per_batch(tmp_path):
    for name, secs, batches in (("natural", 10.0, 100), ("ssr", 30.0, 50)):
        (tmp_path / f"{name}.json").write_text(json.dumps({
            "recipe": name, "epochs": 1, "test_accuracy": 0.9, "mean_seconds_per_epoch": secs,
            "seconds_per_epoch": [secs], "history": [{"batches": batches}]}))
    rec = ex.training_records(tmp_path, ["natural", "ssr"]).set_index("model")
    assert rec.loc["natural", "seconds_per_batch"] == pytest.approx(0.1)
    assert rec.loc["ssr", "seconds_per_batch"] == pytest.approx(0.6)


def test_attack_kwargs_map_the_params_section():
    attack = {"epsilon": 0.1, "step_size": 0.01, "steps": 100, "k": 100, "beta": 10.0, "restarts": 2,
              "convention": "grad_times_input", "direction": {"IG": {"steps": 5}}}
    kw = ex.attack_kwargs(attack, steps=7)
    assert kw == {"step_size": 0.01, "steps": 7, "k": 100, "restarts": 2, "convention": "grad_times_input",
                  "direction_options": {"IG": {"steps": 5}}}
    assert ex.method_options_for({"SG": {"noise_level": 0.1, "samples": 50}}, "SG", samples=8) == \
        {"SG": {"noise_level": 0.1, "samples": 8}}


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nrest\n")
    update_readme(readme, "new table\n")
    assert readme.read_text() == "intro\n<!-- results:start -->\nnew table\n<!-- results:end -->\nrest\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no '<!-- results:start -->'"):
        update_readme(readme, "x")
