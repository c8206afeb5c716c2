"""Sharded attack stage: 2 gloo processes under torchrun give byte-identical outputs to one process, and a run
whose rank was killed resumes. Tiny random FashionCNN on 8x8 synthetic images, 2-3 attack steps; CPU."""
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml

import smoothgeo
from smoothgeo.pipeline import attack as st
from smoothgeo.pipeline import distributed
from smoothgeo.store.checkpoints import save_checkpoint
from smoothgeo.core.models import build_model

N = 7
LIB = str(Path(smoothgeo.__file__).resolve().parents[1])

WORKER = textwrap.dedent('''
    """Runs the attack stage's CLI on synthetic images; FAIL_RANK_AFTER=r:k kills rank r after k partials."""
    import os, sys
    import torch
    from smoothgeo.pipeline import attack as attack_stage
    from smoothgeo.data import images as experiments

    ckpt = sys.argv[sys.argv.index("--checkpoints") + 1]
    model = attack_stage.load_model("natural-s0", checkpoints=ckpt)
    x = torch.rand(%(n)d, 1, 8, 8, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        y = model(x).argmax(1)
    y[-1] = (y[-1] + 1) %% 10            # one image misclassified (not attacked) and two labels at least

    def eval_images(data, n, *, seed, device, root=None):
        return x[:n].to(device), y[:n].to(device)

    experiments.eval_images = eval_images
    fail = os.environ.get("FAIL_RANK_AFTER")
    if fail and os.environ.get("RANK") == fail.split(":")[0]:
        save, count = attack_stage._save_pt, [0]

        def dying_save(path, obj):
            save(path, obj)
            count[0] += 1
            if count[0] >= int(fail.split(":")[1]):
                os._exit(17)            # a killed rank: no clean-up, no exception handling

        attack_stage._save_pt = dying_save
    attack_stage.main(sys.argv[1:])
''') % {"n": N}


def _params(shard_size=2):
    return {"seed": 0, "device": "cpu", "data": {"dataset": "fashion_mnist", "root": "unused"},
            "methods": {"IG": {"steps": 3}, "SG": {"noise_level": 0.1, "samples": 3}},
            "attacks": {"n_images": N, "batch_size": None, "shard_size": shard_size,
                        "evaluated_methods": ["SM", "SG"],
                        "defaults": {"epsilons": [0.1], "step_size": 0.02, "steps": 2, "k": 10,
                                     "surrogates": [10.0]},
                        "settings": {"SM-topk": {"method": "SM", "kind": "topk"},
                                     "SM-targeted": {"method": "SM", "kind": "targeted"},
                                     "IG-random": {"method": "IG", "kind": "random", "steps": 3}}}}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    d = tmp_path_factory.mktemp("dist")
    torch.manual_seed(0)
    model = build_model("fashion_cnn", num_classes=10, image_size=8)
    save_checkpoint(d / "ckpt" / "natural-s0.pt", model, arch="fashion_cnn", num_classes=10,
                    model_kwargs={"image_size": 8}, meta={"recipe": "natural"})
    (d / "worker.py").write_text(WORKER)
    (d / "params.yaml").write_text(yaml.safe_dump(_params()))
    return d


def _launch(d: Path, out: str, nproc: int | None, **env) -> subprocess.CompletedProcess:
    o = d / out
    args = [str(d / "worker.py"), "--params", str(d / "params.yaml"), "--model", "natural-s0",
            "--checkpoints", str(d / "ckpt"), "--records", str(o / "records"), "--tables", str(o / "tables"),
            "--timings", str(o / "timings"), "--partials", str(o / "partials")]
    launcher = [] if nproc is None else ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node",
                                         str(nproc)]
    full_env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join(
        [LIB, os.environ.get("PYTHONPATH", "")]), **env}
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        if nproc is None:
            full_env.pop(key, None)
    return subprocess.run([sys.executable, *launcher, *args], env=full_env, capture_output=True, text=True,
                          timeout=600)


def _outputs(d: Path, out: str) -> tuple[bytes, bytes]:
    """The table's and the records' file bytes."""
    o = d / out
    return (o / "tables" / "natural-s0.csv.gz").read_bytes(), (o / "records" / "natural-s0.pt").read_bytes()


@pytest.fixture(scope="module")
def single(setup):
    proc = _launch(setup, "single", None)
    assert proc.returncode == 0, proc.stderr
    return _outputs(setup, "single")


def test_two_gloo_ranks_write_byte_identical_outputs(setup, single):
    proc = _launch(setup, "two", 2)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    table, records = _outputs(setup, "two")
    assert table == single[0]
    assert records == single[1]
    timing = json.loads((setup / "two" / "timings" / "attack-natural-s0.json").read_text())
    assert timing["world_size"] == 2 and timing["shards"] == 4 and len(timing["computed"]) == 3 * 4
    assert not (setup / "two" / "partials" / "natural-s0").exists()
    frame = st.load_table(setup / "two" / "tables" / "natural-s0.csv.gz")
    assert list(frame.image[frame.evaluated_method == "SM"][:N]) == list(range(N))


def test_killed_rank_resumes(setup, single):
    proc = _launch(setup, "killed", 2, FAIL_RANK_AFTER="1:3")
    assert proc.returncode != 0
    left = sorted(p.name for p in (setup / "killed" / "partials" / "natural-s0").glob("*.pt"))
    # settings run in params order (IG-random, SM-targeted, SM-topk: safe_dump sorts keys); rank 1 (shards
    # 4-6 and 6-7) died after its third partial
    assert {"IG-random-eps0.1@4-6.pt", "IG-random-eps0.1@6-7.pt", "SM-targeted-eps0.1@4-6.pt"} <= set(left)
    assert "SM-topk-eps0.1@6-7.pt" not in left and not (setup / "killed" / "tables").exists()
    proc = _launch(setup, "killed", 2)
    assert proc.returncode == 0, proc.stderr + proc.stdout
    assert _outputs(setup, "killed") == single
    timing = json.loads((setup / "killed" / "timings" / "attack-natural-s0.json").read_text())
    assert {"IG-random-eps0.1@4-6", "IG-random-eps0.1@6-7", "SM-targeted-eps0.1@4-6"} <= set(timing["resumed"])
    assert "SM-topk-eps0.1@6-7" in timing["computed"]


def test_contiguous_shards_cover_every_item_once():
    for n in (0, 1, 5, 12):
        for w in (1, 2, 3, 5):
            got = [i for r in range(w) for i in distributed.contiguous_shard(n, r, w)]
            assert got == list(range(n))
    with pytest.raises(ValueError, match="rank"):
        distributed.contiguous_shard(4, 2, 2)


def test_several_ranks_need_a_shard_size(setup):
    ctx = distributed.Context(rank=0, world_size=2)
    with pytest.raises(ValueError, match="shard_size"):
        st.run(_params(shard_size=None), "natural-s0", checkpoints=setup / "ckpt", dist=ctx)
    with pytest.raises(ValueError, match="shard_size"):
        st.check_params(_params(shard_size=0))


def test_device_for_rank():
    ctx = distributed.Context(rank=1, world_size=2, local_rank=1)
    assert distributed.device_for(ctx, "cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        assert distributed.device_for(ctx, "auto") == torch.device("cpu")
