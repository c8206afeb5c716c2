"""Test-wide settings: one intra-op thread. The tests use tiny models, where OpenMP start-up costs more than it
saves, and on a busy 2-core machine thread contention made tiny Hessian-vector products hundreds of times slower."""
import pytest
import torch

torch.set_num_threads(1)


@pytest.fixture
def no_network(monkeypatch):
    """Any download attempt fails fast, as offline; the Debian folder is only used where a test asks."""
    from smoothgeo.data import fashion, raw

    def refuse(*args, **kwargs):
        raise OSError("network disabled in tests")

    monkeypatch.setattr(fashion, "_fetch", refuse)
    monkeypatch.setattr(raw, "_torchvision_download", refuse)
    monkeypatch.delenv("SMOOTHGEO_DATA_DIRS", raising=False)
    monkeypatch.delenv("SMOOTHGEO_OFFLINE", raising=False)
