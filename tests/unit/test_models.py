from __future__ import annotations

import pytest
import torch
from torch import nn

from raydetect.config import ModelConfig
from raydetect.errors import RaydetectError
from raydetect.models import checked, load_model
from raydetect.models.classifier import fold_batchnorms
from raydetect.models.digits import train_digits_cnn


def test_efficientnet_lite0_loads_embedded_weights_strictly() -> None:
    # Strict loading inside load_model fails on any missing or unexpected key.
    m = load_model(ModelConfig(name="efficientnet_lite0", device="cpu"))
    assert m.input_size == 224 and m.channels == 3 and m.num_classes == 1000
    with torch.no_grad():
        out = m(torch.rand(2, 3, 224, 224))
    assert out.shape == (2, 1000)
    # Normalization lives inside the wrapper: a black image is not the network's zero input.
    assert torch.allclose(m.mean, torch.full_like(m.mean, 0.498))


def test_digits_cnn_reaches_95_percent(digits_model, digits_test) -> None:
    with torch.no_grad():
        pred = digits_model(torch.from_numpy(digits_test.images)).argmax(1).numpy()
    assert (pred == digits_test.labels).mean() >= 0.95


def test_digits_cnn_training_reports_accuracy() -> None:
    _, acc = train_digits_cnn(seed=1, epochs=8)
    assert 0.9 <= acc <= 1.0


def test_inception_v3_plumbing_with_random_weights() -> None:
    m = load_model(ModelConfig(name="inception_v3", random_weights=True, device="cpu"))
    assert m.input_size == 299
    with torch.no_grad():
        assert m(torch.rand(1, 3, 299, 299)).shape == (1, 1000)
    assert isinstance(m.layer("early"), nn.Module)  # the paper's Conv2d_4a_3x3


def test_inception_v3_without_weights_says_how_to_get_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    monkeypatch.setenv("RAYDETECT_OFFLINE", "1")
    with pytest.raises(RaydetectError, match="--weights") as err:
        load_model(ModelConfig(name="inception_v3", device="cpu"))
    assert "inception_v3_google" in str(err.value)


def test_torchvision_weights_from_file_round_trip(tmp_path) -> None:
    ref = load_model(ModelConfig(name="resnet18", random_weights=True, device="cpu"))
    # Save an unfolded copy's weights: rebuild the architecture and load them through --weights.
    import torchvision

    net = torchvision.models.resnet18(weights=None)
    torch.save(net.state_dict(), tmp_path / "w.pt")
    m = load_model(ModelConfig(name="resnet18", weights=str(tmp_path / "w.pt"), device="cpu"))
    net.eval()
    x = torch.rand(1, 3, 224, 224)
    with torch.no_grad():
        expected = net((x - m.mean) / m.std)
        assert torch.allclose(m(x), expected, atol=1e-3, rtol=1e-3)
    assert ref.num_classes == 1000


def test_bad_weights_file_is_a_clear_error(tmp_path) -> None:
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(RaydetectError, match="cannot read weights"):
        load_model(ModelConfig(name="digits_cnn", weights=str(bad), device="cpu"))
    with pytest.raises(RaydetectError, match="not found"):
        load_model(ModelConfig(name="digits_cnn", weights=str(tmp_path / "missing.pt"), device="cpu"))


def test_unknown_model_is_rejected_at_validation() -> None:
    with pytest.raises(RaydetectError, match="unknown model"):
        checked(ModelConfig(name="no_such_net"))


def test_batchnorm_folding_keeps_the_function() -> None:
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Conv2d(8, 4, 1), nn.BatchNorm2d(4))
    for bn in (net[1], net[4]):
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
        bn.weight.data.uniform_(0.5, 2)
    net.eval()
    folded = fold_batchnorms(net, 3, 16)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
    x = torch.rand(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(net(x), folded(x), atol=1e-5)


def test_batchnorm_folding_refuses_when_order_misleads() -> None:
    # The BN runs *before* the conv here, although registered after it: folding would be wrong.
    class Odd(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = nn.Conv2d(3, 3, 1)
            self.bn = nn.BatchNorm2d(3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.conv(self.bn(x))

    net = Odd().eval()
    net.bn.running_mean.fill_(0.7)
    assert fold_batchnorms(net, 3, 8) is net
