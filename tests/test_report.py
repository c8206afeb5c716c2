"""Tables and figures are deterministic; the claims table follows its stated rules; the zoo helpers work."""
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
from smoothgeo.summary import claims, update_readme  # noqa: E402


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


def _results(tmp_path, *, ssr_topk, lam_rho):
    r = tmp_path / "results"
    for sub in ("robust_training", "geometry", "smoothing", "transfer"):
        (r / sub).mkdir(parents=True)
    pd.DataFrame({"model": ["natural", "ssr_s1"], "clean_accuracy": [0.9, 0.85]}).to_csv(
        r / "robust_training/robust_training.csv", index=False)
    pd.DataFrame({"model": ["natural", "ssr_s1"], "attacked_method": "SM", "kind": "topk", "epsilon": 0.1,
                  "topk_mean": [0.30, ssr_topk], "topk_sem": [0.01, 0.01]}).to_csv(
        r / "robust_training/attack_summary.csv", index=False)
    pd.DataFrame({"geometry": ["lambda_max_mean", "lipschitz_adversarial"], "robustness": "SM_topk",
                  "spearman": [lam_rho, 0.1], "p_value": 0.5, "models": 2}).to_csv(
        r / "geometry/geometry_correlation.csv", index=False)
    pd.DataFrame({"model": ["natural"], "within_bound": [0.2]}).to_csv(r / "geometry/lipschitz_bound_check.csv",
                                                                        index=False)
    pd.DataFrame({"variant": ["SM", "SG-0.1"], "kind": "topk", "epsilon": 0.1, "topk_mean": [0.3, 0.6],
                  "topk_sem": [0.01, 0.01]}).to_csv(r / "smoothing/smoothing.csv", index=False)
    pd.DataFrame({"model": ["natural", "ssr_s1"], "off_diagonal_topk": [0.5, 0.4]}).to_csv(
        r / "transfer/transfer_gap.csv", index=False)
    return r


def test_claims_follow_their_rules(tmp_path):
    table = claims(_results(tmp_path, ssr_topk=0.5, lam_rho=-0.8)).set_index("claim")
    verdict = table["verdict"]
    assert verdict.filter(like="SSR makes SM").item() == "reproduces"          # 0.5 vs 0.3, SE 0.014
    assert verdict.filter(like="lambda_max goes").item() == "reproduces"       # rho -0.8
    assert verdict.filter(like="Lipschitz constant").item() == "does not reproduce"   # rho +0.1
    assert verdict.filter(like="L * ||delta||").item() == "does not reproduce"        # 20 % within
    assert verdict.filter(like="SG-0.1").item() == "reproduces"
    assert verdict.filter(like="transfer less").item() == "does not reproduce"        # 0.4 < 0.5

    weak = claims(_results(tmp_path / "w", ssr_topk=0.31, lam_rho=-0.2)).set_index("claim")["verdict"]
    assert weak.filter(like="SSR makes SM").item() == "partly"
    assert weak.filter(like="lambda_max goes").item() == "partly"


def test_claims_name_a_missing_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="robust_training.csv is missing.*dvc repro"):
        claims(tmp_path)


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
