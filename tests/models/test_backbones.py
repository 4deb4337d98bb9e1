"""Backbones: shapes per name, the small stem, local weight loading, the registry."""

from __future__ import annotations

import pytest
import torch
import torchvision
from torch import nn

from mscon.models import BACKBONES, available_backbones, build_backbone
from mscon.models.backbones import SmallCNN

DIMS = {"resnet18": 512, "resnet50": 2048, "resnet18_small": 512, "resnet50_small": 2048}


pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.mark.parametrize("name", sorted(DIMS) + ["cnn_small", "cnn_small_gn"])
def test_backbone_maps_images_to_features(name: str) -> None:
    torch.manual_seed(0)
    encoder, dim = build_backbone(name)
    assert dim == DIMS.get(name, 256)
    batch = 2 if "50" in name else 3
    with torch.no_grad():
        out = encoder.eval()(torch.randn(batch, 3, 32, 32))
    assert out.shape == (batch, dim)
    assert out.dtype == torch.float32 and torch.isfinite(out).all()


@pytest.mark.parametrize(("name", "side"), [("resnet18_small", 32), ("resnet18", 8)])
def test_small_stem_keeps_resolution_in_first_layer(name: str, side: int) -> None:
    encoder, _ = build_backbone(name)
    shapes = []
    encoder.layer1.register_forward_hook(lambda _m, _i, out: shapes.append(out.shape))
    with torch.no_grad():
        encoder.eval()(torch.randn(1, 3, 32, 32))
    assert shapes == [(1, 64, side, side)]
    if name.endswith("_small"):
        assert encoder.conv1.kernel_size == (3, 3) and encoder.conv1.stride == (1, 1)
        assert isinstance(encoder.maxpool, nn.Identity)


def test_cnn_small_trains_and_has_four_conv_blocks() -> None:
    encoder, dim = build_backbone("cnn_small")
    convs = [m for m in encoder.modules() if isinstance(m, nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128, 256] and dim == 256
    out = encoder(torch.randn(4, 3, 16, 16))
    out.sum().backward()
    assert all(p.grad is not None for p in encoder.parameters())


def test_cnn_small_gn_has_no_batch_statistics() -> None:
    """GroupNorm: an image's features do not depend on its batch (exact K-process runs)."""
    torch.manual_seed(0)
    encoder, dim = build_backbone("cnn_small_gn")
    norms = [m for m in encoder.modules() if isinstance(m, nn.GroupNorm)]
    assert [(n.num_groups, n.num_channels) for n in norms] == [(8, 32), (8, 64), (8, 128), (8, 256)]
    assert not any(isinstance(m, nn.modules.batchnorm._BatchNorm) for m in encoder.modules())
    assert dim == 256 and not encoder.state_dict().keys() & {"features.0.1.running_mean"}
    images = torch.randn(6, 3, 16, 16)
    whole = encoder.train()(images)
    torch.testing.assert_close(encoder(images[:2]), whole[:2], rtol=1e-5, atol=1e-6)
    batch_norm, _ = build_backbone("cnn_small")
    with torch.no_grad():
        assert not torch.allclose(batch_norm.train()(images[:2]), batch_norm(images)[:2])


def test_unknown_name_lists_available() -> None:
    with pytest.raises(ValueError, match="resnet18_small") as info:
        build_backbone("vit_huge")
    assert "vit_huge" in str(info.value)


def test_registry_is_extensible(monkeypatch: pytest.MonkeyPatch) -> None:
    assert available_backbones() == sorted(BACKBONES)
    monkeypatch.setitem(
        BACKBONES, "tiny", lambda: (nn.Sequential(nn.Flatten(), nn.Linear(12, 3)), 3)
    )
    encoder, dim = build_backbone("tiny")
    assert "tiny" in available_backbones() and encoder(torch.zeros(2, 3, 2, 2)).shape == (2, dim)


def _same(a: nn.Module, b: nn.Module) -> bool:
    sa, sb = a.state_dict(), b.state_dict()
    return sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)


def test_weights_load_from_state_dict_ignoring_fc(tmp_path) -> None:
    torch.manual_seed(1)
    source = SmallCNN()
    state = {**source.state_dict(), "fc.weight": torch.randn(10, 256), "fc.bias": torch.zeros(10)}
    torch.save(state, tmp_path / "w.pt")
    encoder, _ = build_backbone("cnn_small", str(tmp_path / "w.pt"))
    assert _same(encoder, source)
    assert not _same(build_backbone("cnn_small")[0], source)


def test_weights_load_from_checkpoint_dict_with_module_prefix(tmp_path) -> None:
    torch.manual_seed(2)
    source = SmallCNN()
    wrapped = {f"module.{k}": v for k, v in source.state_dict().items()}
    torch.save({"state_dict": wrapped, "epoch": 3}, tmp_path / "ckpt.pth")
    encoder, _ = build_backbone("cnn_small", tmp_path / "ckpt.pth")
    assert _same(encoder, source)


def test_torchvision_weights_on_small_stem_skip_first_conv(tmp_path) -> None:
    torch.manual_seed(3)
    source = torchvision.models.resnet18(weights=None)  # has fc.* (1000 classes) and a 7x7 conv1
    torch.save(source.state_dict(), tmp_path / "resnet18.pth")
    with pytest.warns(UserWarning, match="conv1.weight"):
        encoder, _ = build_backbone("resnet18_small", str(tmp_path / "resnet18.pth"))
    assert torch.equal(encoder.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert encoder.conv1.weight.shape == (64, 3, 3, 3)
    full, _ = build_backbone("resnet18", str(tmp_path / "resnet18.pth"))
    assert torch.equal(full.conv1.weight, source.conv1.weight)


def test_weights_errors(tmp_path) -> None:
    with pytest.raises(ValueError, match="not found"):
        build_backbone("cnn_small", str(tmp_path / "missing.pt"))
    torch.save({"something.else": torch.zeros(3)}, tmp_path / "other.pt")
    with pytest.raises(ValueError, match="no tensor"):
        build_backbone("cnn_small", str(tmp_path / "other.pt"))
    (tmp_path / "garbage.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="cannot read"):
        build_backbone("cnn_small", str(tmp_path / "garbage.pt"))
