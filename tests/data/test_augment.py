"""Batched views: shapes, reproducibility, per-sample randomness, each op against torchvision."""

from __future__ import annotations

import pytest
import torch
from torchvision.transforms.v2 import functional as TF

from mscon.data.augment import (
    MEAN,
    STD,
    ViewAugment,
    _blur,
    colour_jitter,
    make_views,
    to_float,
)


def _images(n: int = 6, size: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, size, size), generator=g, dtype=torch.uint8)


def _unnormalise(x: torch.Tensor) -> torch.Tensor:
    return x * torch.tensor(STD).view(3, 1, 1) + torch.tensor(MEAN).view(3, 1, 1)


@pytest.mark.parametrize("kind", ["simclr", "weak", "strong", "none"])
@pytest.mark.parametrize("source", [16, 24])
def test_shapes_and_range(kind, source):
    out = ViewAugment(16, kind)(_images(size=source), torch.Generator().manual_seed(0))
    assert out.shape == (6, 3, 16, 16) and out.dtype == torch.float32
    unit = _unnormalise(out)
    assert unit.min() >= -1e-5 and unit.max() <= 1 + 1e-5


def test_views_reproducible_from_seed():
    images = _images()
    augments = [ViewAugment(16, "strong"), ViewAugment(16, "weak"), ViewAugment(16, "simclr")]
    a = make_views(images, augments, torch.Generator().manual_seed(7))
    b = make_views(images, augments, torch.Generator().manual_seed(7))
    c = make_views(images, augments, torch.Generator().manual_seed(8))
    assert a.shape == (6, 3, 3, 16, 16)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert not torch.equal(a[:, 0], a[:, 2])  # views of one image differ


@pytest.mark.parametrize("kinds", [["simclr", "simclr"], ["weak", "strong"], ["none"]])
def test_shards_keep_their_rows_of_the_global_batch(kinds):
    """Under torchrun each rank augments its slice with the global batch's parameters."""
    images = _images(7)
    augments = [ViewAugment(16, kind) for kind in kinds]
    whole = make_views(images, augments, torch.Generator().manual_seed(3))
    for start, stop in ((0, 4), (4, 7), (2, 3)):
        part = make_views(
            images[start:stop],
            augments,
            torch.Generator().manual_seed(3),
            offset=start,
            total=7,
        )
        torch.testing.assert_close(part, whole[start:stop], rtol=0, atol=1e-6)
    with pytest.raises(ValueError, match="not in a batch of 7"):
        make_views(images[:4], augments, torch.Generator(), offset=5, total=7)


def test_parameters_are_per_sample():
    same = _images(1).expand(8, 3, 16, 16)
    out = ViewAugment(16, "simclr")(same, torch.Generator().manual_seed(0))
    distinct = {tuple(out[i].flatten()[:20].tolist()) for i in range(8)}
    assert len(distinct) == 8


def test_none_is_to_float_and_identity_crop_is_exact():
    images = _images()
    g = torch.Generator().manual_seed(0)
    assert torch.equal(ViewAugment(16, "none")(images, g), to_float(images))
    keep = dict(crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0))
    assert torch.allclose(
        ViewAugment(16, "weak", flip_prob=0.0, **keep)(images, g), to_float(images), atol=1e-6
    )
    flipped = ViewAugment(16, "weak", flip_prob=1.0, **keep)(images, g)
    assert torch.allclose(flipped, to_float(images).flip(-1), atol=1e-6)
    resized = ViewAugment(8, "none")(images, g)
    assert torch.allclose(resized, to_float(images, size=8))


def test_crop_zooms_in():
    # a horizontal ramp: a crop of half the width (a quarter of the area) spans half the ramp
    ramp = (torch.arange(16) * 16).to(torch.uint8).view(1, 1, 1, 16).expand(4, 3, 16, 16)
    aug = ViewAugment(16, "weak", crop_scale=(0.25, 0.25), crop_ratio=(1.0, 1.0), flip_prob=0.0)
    out = _unnormalise(aug(ramp.contiguous(), torch.Generator().manual_seed(0)))[:, 0]
    spans = out[:, 0, -1] - out[:, 0, 0]
    assert torch.allclose(spans, torch.full((4,), 7.5 * 16 / 255), atol=0.03)  # 8 px -> 16 px
    assert (out[:, :, 1:] >= out[:, :, :-1] - 1e-6).all()  # not flipped: still increasing


def _batch_colour(
    x, brightness=1.0, contrast=1.0, saturation=1.0, hue=0.0, gray=False, order=(0, 1, 2, 3)
):
    b = x.shape[0]
    factors = torch.tensor([[brightness, contrast, saturation, hue]]).expand(b, 4)
    return colour_jitter(x, factors, torch.tensor([order]).expand(b, 4), torch.tensor([gray] * b))


def test_colour_ops_match_torchvision():
    g = torch.Generator().manual_seed(0)
    x = 0.3 + 0.4 * torch.rand(4, 3, 8, 8, generator=g)  # mid-range: no clipping
    torch.testing.assert_close(_batch_colour(x, brightness=1.2), TF.adjust_brightness(x, 1.2))
    torch.testing.assert_close(_batch_colour(x, contrast=0.7), TF.adjust_contrast(x, 0.7))
    torch.testing.assert_close(_batch_colour(x, saturation=1.3), TF.adjust_saturation(x, 1.3))
    torch.testing.assert_close(
        _batch_colour(x, gray=True), TF.rgb_to_grayscale(x, num_output_channels=3)
    )
    # contrast after brightness uses the brightened mean, as a sequential pipeline does
    expected = TF.adjust_contrast(TF.adjust_brightness(x, 0.8), 1.3)
    torch.testing.assert_close(
        _batch_colour(x, brightness=0.8, contrast=1.3, order=(0, 1, 2, 3)), expected
    )
    expected = TF.adjust_brightness(TF.adjust_contrast(x, 1.3), 0.8)
    torch.testing.assert_close(
        _batch_colour(x, brightness=0.8, contrast=1.3, order=(1, 0, 2, 3)), expected
    )


def test_hue_and_orders_match_torchvision():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(4, 3, 8, 8, generator=g)
    for shift in (0.02, -0.3, 0.5):
        torch.testing.assert_close(
            _batch_colour(x, hue=shift), TF.adjust_hue(x, shift), atol=2e-5, rtol=0
        )
    y = 0.3 + 0.4 * x
    expected = TF.adjust_contrast(TF.adjust_hue(TF.adjust_saturation(y, 0.8), 0.1), 1.2)
    got = _batch_colour(y, saturation=0.8, hue=0.1, contrast=1.2, order=(2, 3, 1, 0))
    torch.testing.assert_close(got, expected, atol=2e-5, rtol=0)
    mixed = torch.cat([y[:2], y[2:]])
    factors = torch.tensor([[1.0, 1.2, 0.8, 0.1]]).expand(4, 4)
    orders = torch.tensor([[2, 3, 1, 0], [2, 3, 1, 0], [1, 0, 3, 2], [1, 0, 3, 2]])
    out = colour_jitter(mixed, factors, orders, torch.zeros(4, dtype=torch.bool))
    torch.testing.assert_close(out[:2], expected[:2], atol=2e-5, rtol=0)
    other = TF.adjust_saturation(TF.adjust_hue(TF.adjust_contrast(y[2:], 1.2), 0.1), 0.8)
    torch.testing.assert_close(out[2:], other, atol=2e-5, rtol=0)


def test_blur_matches_torchvision_and_zero_sigma_is_identity():
    x = torch.rand(3, 3, 16, 16, generator=torch.Generator().manual_seed(1))
    out = _blur(x, torch.tensor([0.0, 1.0, 0.5]))
    assert torch.equal(out[0], x[0])
    torch.testing.assert_close(
        out[1], TF.gaussian_blur(x[1], [7, 7], [1.0, 1.0]), atol=1e-5, rtol=0
    )
    expected = TF.gaussian_blur(x[2], [7, 7], [0.5, 0.5])
    torch.testing.assert_close(out[2], expected, atol=1e-5, rtol=0)


def test_solarize_inverts_bright_pixels():
    image = torch.tensor([[[[0, 100, 200, 255]]]], dtype=torch.uint8).expand(1, 3, 1, 4)
    aug = ViewAugment(
        4, "weak", crop_scale=(1.0, 1.0), crop_ratio=(1.0, 1.0), flip_prob=0.0, solarize_prob=1.0
    )
    out = _unnormalise(aug(image.expand(1, 3, 4, 4).contiguous(), torch.Generator()))[0, 0, 0]
    torch.testing.assert_close(
        out, torch.tensor([0.0, 100 / 255, 1 - 200 / 255, 0.0]), atol=1e-5, rtol=0
    )


def test_float_input_and_generator_device():
    images = _images()
    g = torch.Generator(device="cpu").manual_seed(3)
    a = ViewAugment(16)(images, g)
    b = ViewAugment(16)(images.float() / 255, torch.Generator().manual_seed(3))
    torch.testing.assert_close(a, b)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_itself():
    images = _images().cuda()
    g1 = torch.Generator(device="cuda").manual_seed(0)
    g2 = torch.Generator(device="cuda").manual_seed(0)
    a = make_views(images, [ViewAugment(16, "strong")] * 2, g1)
    b = make_views(images, [ViewAugment(16, "strong")] * 2, g2)
    assert a.is_cuda and torch.equal(a, b)


@pytest.mark.parametrize(
    ("args", "kwargs", "message"),
    [
        ((16, "fancy"), {}, "augment.kind: unknown recipe 'fancy'"),
        ((16,), {"jitter": 0.4}, "augment.overrides: unknown key 'jitter'"),
        ((16,), {"gray_prob": 1.5}, r"gray_prob: expected a probability in \[0, 1\]"),
        ((16,), {"crop_scale": (0.9, 0.2)}, "crop_scale"),
        ((16,), {"crop_scale": (0.5, 1.5)}, "crop_scale"),
        ((16,), {"hue": 0.7}, "hue"),
        ((0,), {}, "image_size"),
    ],
)
def test_bad_arguments(args, kwargs, message):
    with pytest.raises(ValueError, match=message):
        ViewAugment(*args, **kwargs)


def test_make_views_errors():
    with pytest.raises(ValueError, match="at least one"):
        make_views(_images(), [], torch.Generator())
    with pytest.raises(ValueError, match="one image_size"):
        make_views(_images(), [ViewAugment(16), ViewAugment(8)], torch.Generator())
    with pytest.raises(ValueError, match="uint8"):
        ViewAugment(16)(torch.zeros(2, 3, 16, 16, dtype=torch.int32), torch.Generator())


def test_result_does_not_depend_on_chunking(monkeypatch):
    import mscon.data.augment as augment_module

    images = _images(n=10)
    augments = [ViewAugment(16, "simclr"), ViewAugment(16, "strong")]
    whole = make_views(images, augments, torch.Generator().manual_seed(5))
    monkeypatch.setattr(augment_module, "_CHUNK_PIXELS", 3 * 16 * 16)  # chunks of 3 images
    chunked = make_views(images, augments, torch.Generator().manual_seed(5))
    torch.testing.assert_close(chunked, whole, atol=1e-5, rtol=0)


def test_folded_normalisation_matches_separate_step():
    g = torch.Generator().manual_seed(4)
    x = torch.rand(5, 3, 8, 8, generator=g)
    factors = torch.tensor([[1.3, 0.7, 1.2, 0.05]]).expand(5, 4)
    order = torch.argsort(torch.rand(5, 4, generator=g), dim=1)
    gray = torch.tensor([True, False, False, True, False])
    plain = colour_jitter(x, factors, order, gray)
    folded = colour_jitter(x, factors, order, gray, normalise=True)
    torch.testing.assert_close(_unnormalise(folded), plain, atol=1e-5, rtol=0)
    assert torch.allclose(plain[0], plain[0][:1].expand(3, 8, 8))  # grayscale rows are gray
