import pytest
import torch
from torch import nn

from smoothgeo.core.models import FashionCNN, MLP, ResNet20, build_model, resnet50_imagenet, softplus_copy


def test_fashion_cnn_shapes_and_layers():
    model = FashionCNN()
    assert model(torch.rand(3, 1, 28, 28)).shape == (3, 10)
    convs = [m for m in model.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64] and all(c.kernel_size == (5, 5) for c in convs)
    fcs = [m for m in model.modules() if isinstance(m, nn.Linear)]
    assert [f.out_features for f in fcs] == [1024, 10]


def test_resnet20_shapes():
    model = ResNet20().eval()
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 10)
    n_conv = sum(isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) for m in model.modules())
    assert n_conv == 19  # + the final linear layer = 20 weighted layers


def test_resnet50_builds_without_weights_and_fails_clearly_on_bad_weights(tmp_path):
    model = resnet50_imagenet(pretrained=False).eval()
    with torch.no_grad():
        assert model(torch.rand(1, 3, 64, 64)).shape == (1, 1000)
    bad = tmp_path / "resnet50.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RuntimeError, match="Could not load ResNet-50 ImageNet weights"):
        resnet50_imagenet(pretrained=True, weights_path=str(bad))


def test_softplus_copy_replaces_relus_keeps_weights_and_original():
    model = FashionCNN().eval()
    smooth = softplus_copy(model, beta=5.0)
    assert not any(isinstance(m, nn.ReLU) for m in smooth.modules())
    assert sum(isinstance(m, nn.Softplus) for m in smooth.modules()) == 3
    assert any(isinstance(m, nn.ReLU) for m in model.modules())
    for p, q in zip(model.parameters(), smooth.parameters()):
        assert torch.equal(p, q) and p.data_ptr() != q.data_ptr()
    x = torch.rand(4, 1, 28, 28)
    with torch.no_grad():
        sharp = softplus_copy(model, beta=1e4)(x)
        torch.testing.assert_close(sharp, model(x), atol=1e-3, rtol=1e-3)
    with pytest.raises(ValueError, match="beta must be > 0"):
        softplus_copy(model, beta=0)


def test_build_model_registry():
    assert isinstance(build_model("fashion_cnn"), FashionCNN)
    assert isinstance(build_model("mlp", num_classes=3), MLP)
    with pytest.raises(ValueError, match="unknown architecture 'vgg'"):
        build_model("vgg")
