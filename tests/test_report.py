"""Tables and figures are deterministic; the README block is replaced in place; the zoo helpers work."""
import json

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402

from smoothgeo.data import images as ex  # noqa: E402
from smoothgeo.store.checkpoints import save_checkpoint  # noqa: E402
from smoothgeo.core.models import MLP  # noqa: E402
from smoothgeo.analysis.render import repo_root, save_figure, save_table  # noqa: E402
from smoothgeo.pipeline.summary import update_readme  # noqa: E402


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


def test_accuracy_counts_in_batches():
    torch.manual_seed(0)
    model = MLP(in_features=4, hidden=(8,), num_classes=3)
    x = torch.rand(5, 4)
    y = model(x).argmax(1)
    assert ex.test_accuracy(model, x, y, batch_size=2) == 1.0
    y[0] = (y[0] + 1) % 3
    assert ex.test_accuracy(model, x, y, batch_size=2) == pytest.approx(0.8)


def test_update_readme_replaces_only_the_marked_block(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("intro\n<!-- results:start -->\nold\n<!-- results:end -->\nrest\n")
    update_readme(readme, "new table\n")
    assert readme.read_text() == "intro\n<!-- results:start -->\nnew table\n<!-- results:end -->\nrest\n"
    readme.write_text("no markers\n")
    with pytest.raises(ValueError, match="no '<!-- results:start -->'"):
        update_readme(readme, "x")
