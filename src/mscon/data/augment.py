"""Batched random views on tensors, on the training device, reproducible from a seed.

One :class:`ViewAugment` is one recipe; calling it on a uint8 batch draws
per-sample random parameters from the given ``torch.Generator`` and returns
normalised float32 views. Everything is a handful of whole-batch tensor ops (no
PIL, no per-image Python loop):

* random resized crop + horizontal flip: one bilinear ``grid_sample`` over a
  grid built from each sample's box (the flip is a negative x scale); crop
  area and aspect ratio are drawn as in torchvision (10 tries, then the whole
  image);
* colour jitter: brightness, contrast, saturation and hue in a random order per
  sample; the affine steps before and after the hue shift each compose into
  one per-sample 3x4 colour matrix (applied by one batched matmul), the hue
  shift is an exact, vectorised HSV rotation, and random grayscale folds into
  the last matrix;
* optional Gaussian blur (separable, per-sample sigma, grouped convolution) and
  solarisation; finally normalisation by :data:`MEAN` / :data:`STD`.

On CPU the per-pixel work runs in chunks of about 2**17 pixels (temporaries
stay in cache); the result does not depend on the chunk size. On a GPU the
whole batch is one chunk. Parameters are drawn for the whole batch first
(:meth:`ViewAugment.sample`), then applied (:meth:`ViewAugment.apply`).

Difference from torchvision's per-sample transforms: consecutive affine colour
steps are clamped to [0, 1] once, after the group, instead of after each step
(identical whenever no intermediate value leaves [0, 1]).

Recipes (``kind``); every value can be overridden by keyword:

=============  =====================================================================
``simclr``     crop scale (0.5, 1), flip 0.5, jitter 0.8 (0.4, 0.4, 0.4, hue 0.02),
               grayscale 0.1; no blur, no solarisation
``weak``       crop scale (0.5, 1) and flip only (the teacher view of SCE / MoCo)
``strong``     ``simclr`` + blur 0.5 + solarisation 0.2 (the student view)
``none``       resize only (evaluation)
=============  =====================================================================

The defaults are milder than SimCLR's ImageNet recipe on purpose: the embedded
dataset's ``color`` and ``size`` similarities must survive the augmentation
(hue jitter 0.1 or grayscale 0.2 would erase much of ``color``; crops down to
8 % of the image would erase ``size``). See docs/data.md.

Example:
    >>> images = torch.randint(0, 256, (4, 3, 32, 32), dtype=torch.uint8)
    >>> augments = [ViewAugment(32, "simclr"), ViewAugment(32, "simclr")]
    >>> views = make_views(images, augments, torch.Generator().manual_seed(0))
    >>> views.shape, views.dtype
    (torch.Size([4, 2, 3, 32, 32]), torch.float32)
    >>> again = make_views(images, augments, torch.Generator().manual_seed(0))
    >>> torch.equal(views, again)
    True
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F

MEAN = (0.485, 0.456, 0.406)
STD = (0.229, 0.224, 0.225)
_LUMA = (0.2989, 0.587, 0.114)  # as torchvision's rgb_to_grayscale
_TRIES = 10
_CHUNK_PIXELS = 2**17  # CPU: images per chunk x pixels per image (keeps temporaries small)

_BASE: dict[str, Any] = {
    "crop_scale": (0.5, 1.0),
    "crop_ratio": (3 / 4, 4 / 3),
    "flip_prob": 0.5,
    "jitter_prob": 0.8,
    "brightness": 0.4,
    "contrast": 0.4,
    "saturation": 0.4,
    "hue": 0.02,
    "gray_prob": 0.1,
    "blur_prob": 0.0,
    "blur_sigma": None,  # pixels of the output; None = (0.1, 1.0) x image_size / 32
    "solarize_prob": 0.0,
    "solarize_threshold": 0.5,
}
_NO_COLOUR = {"jitter_prob": 0.0, "gray_prob": 0.0, "blur_prob": 0.0, "solarize_prob": 0.0}
RECIPES: dict[str, dict[str, Any]] = {
    "simclr": dict(_BASE),
    "weak": {**_BASE, **_NO_COLOUR},
    "strong": {**_BASE, "blur_prob": 0.5, "solarize_prob": 0.2},
    "none": {
        **_BASE,
        **_NO_COLOUR,
        "crop_scale": (1.0, 1.0),
        "crop_ratio": (1.0, 1.0),
        "flip_prob": 0.0,
    },
}


def to_float(images: torch.Tensor, size: int | None = None) -> torch.Tensor:
    """uint8 (n, 3, H, W) -> float32 normalised by MEAN / STD, no augmentation.

    Args:
        images: uint8 batch (float input is taken as already in [0, 1]).
        size: optional output side (bilinear, antialiased resize when it differs).

    Example:
        >>> to_float(torch.full((1, 3, 2, 2), 255, dtype=torch.uint8))[0, :, 0, 0]
        tensor([2.2489, 2.4286, 2.6400])
    """
    x = _unit(images)
    return _normalise(x if size is None else _resize(x, size))


def _resize(x: torch.Tensor, size: int) -> torch.Tensor:
    """Bilinear, antialiased resize to (size, size); a copy when already that size."""
    if x.shape[-2:] == (size, size):
        return x.clone()
    return F.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)


class ViewAugment:
    """One augmentation recipe, batched, with per-sample random parameters.

    Args:
        image_size: output side S in pixels.
        kind: "simclr", "weak", "strong" or "none" (see the module docstring).
        **overrides: any recipe value, e.g. ``crop_scale=(0.2, 1.0)``, ``hue=0.1``,
            ``gray_prob=0.2``, ``blur_prob=0.5``, ``blur_sigma=(0.1, 2.0)``,
            ``solarize_prob=0.2``.

    Example:
        >>> aug = ViewAugment(16, "strong", hue=0.05)
        >>> aug(torch.zeros(2, 3, 32, 32, dtype=torch.uint8), torch.Generator()).shape
        torch.Size([2, 3, 16, 16])
    """

    def __init__(self, image_size: int, kind: str = "simclr", **overrides: Any) -> None:
        if kind not in RECIPES:
            raise ValueError(
                f"augment.kind: unknown recipe {kind!r}; expected one of {list(RECIPES)}"
            )
        if int(image_size) < 1:
            raise ValueError(f"image_size: expected a positive side, got {image_size}")
        unknown = sorted(set(overrides) - set(_BASE))
        if unknown:
            raise ValueError(
                f"augment.overrides: unknown key {unknown[0]!r}; known: {', '.join(_BASE)}"
            )
        self.image_size = int(image_size)
        self.kind = kind
        params = {**RECIPES[kind], **overrides}
        if params["blur_sigma"] is None:
            params["blur_sigma"] = (0.1 * image_size / 32, 1.0 * image_size / 32)
        self.params = _check(params)
        self._plain = kind == "none" and not overrides  # resize only, no random draws

    def __repr__(self) -> str:
        changed = {k: v for k, v in overrides_of(self).items()}
        extra = "".join(f", {k}={v}" for k, v in changed.items())
        return f"ViewAugment({self.image_size}, {self.kind!r}{extra})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
        """uint8 (B, 3, H, W) on any device -> float32 normalised (B, 3, S, S)."""
        x = _unit(images)
        out = torch.empty(x.shape[0], 3, self.image_size, self.image_size, device=x.device)
        self.apply(x, self.sample(x.shape[0], generator, x.device), out)
        return out

    def sample(self, batch: int, generator: torch.Generator, device: torch.device) -> dict:
        """Per-sample random parameters of a batch, drawn in a fixed order from ``generator``.

        Returns:
            A dict of (batch, ...) tensors on ``device``: crop box and flip, colour
            factors / order / grayscale, blur sigma (0 = none), solarise flags.
        """
        p = self.params
        if self._plain:
            return {}
        draws = _Draws(generator, batch, device)
        area = draws.uniform(*p["crop_scale"], _TRIES)
        log_ratio = draws.uniform(
            math.log(p["crop_ratio"][0]), math.log(p["crop_ratio"][1]), _TRIES
        )
        params = {"area": area, "ratio": torch.exp(log_ratio)}
        params["cx"], params["cy"] = draws.rand(), draws.rand()
        params["flip"] = draws.rand() < p["flip_prob"]
        jitter = draws.rand() < p["jitter_prob"]
        factors = torch.stack(
            [
                draws.uniform(max(0.0, 1 - p["brightness"]), 1 + p["brightness"]),
                draws.uniform(max(0.0, 1 - p["contrast"]), 1 + p["contrast"]),
                draws.uniform(max(0.0, 1 - p["saturation"]), 1 + p["saturation"]),
                draws.uniform(-p["hue"], p["hue"]),
            ],
            dim=1,
        )
        identity = _constant("identity", device)
        params["factors"] = torch.where(jitter[:, None], factors, identity)
        params["order"] = torch.argsort(draws.rand(4), dim=1)
        params["gray"] = draws.rand() < p["gray_prob"]
        blur = draws.rand() < p["blur_prob"]
        sigma = draws.uniform(*p["blur_sigma"])
        params["sigma"] = torch.where(blur, sigma, torch.zeros_like(sigma))
        params["solarize"] = draws.rand() < p["solarize_prob"]
        return params

    def apply(self, x: torch.Tensor, params: dict, out: torch.Tensor) -> torch.Tensor:
        """Write the normalised views of float images ``x`` in [0, 1] into ``out`` (B, 3, S, S).

        ``params`` comes from :meth:`sample`. The per-pixel work runs in chunks
        on CPU (about 2**17 pixels each) so that temporaries stay in cache; the
        result does not depend on the chunk size.
        """
        if x.dim() != 4 or x.shape[1] != 3:
            raise ValueError(f"images: expected (B, 3, H, W), got {tuple(x.shape)}")
        if self._plain:
            return _normalise(_resize(x, self.image_size), out=out)
        p = self.params
        chunks = _chunks(x.shape[0], max(x.shape[-1] * x.shape[-2], self.image_size**2), x.device)
        grid = self._crop_grid(x, params)
        for rows in chunks:
            out[rows] = F.grid_sample(
                x[rows], grid[rows], mode="bilinear", padding_mode="border", align_corners=False
            )
        late = p["blur_prob"] > 0 or p["solarize_prob"] > 0  # steps that need [0, 1] values
        if p["jitter_prob"] > 0 or p["gray_prob"] > 0:
            hue = p["hue"] > 0 and p["jitter_prob"] > 0
            args = (params["factors"], params["order"], params["gray"])
            _colour_in_place(out, *args, hue=hue, normalise=not late, chunks=chunks)
            if not late:
                return out
        mean, std = (t.view(1, 3, 1, 1) for t in _mean_std(x.device))
        for rows in chunks:
            y = out[rows]
            sigma = params["sigma"][rows]
            if p["blur_prob"] > 0 and (y.device.type != "cpu" or bool((sigma > 0).any())):
                y.copy_(_blur(y, sigma))
            if p["solarize_prob"] > 0:
                chosen = params["solarize"][rows].view(-1, 1, 1, 1).to(y.dtype)
                flip = (y >= p["solarize_threshold"]).to(y.dtype).mul_(chosen)
                y.addcmul_(flip, 1 - 2 * y)  # y -> 1 - y where flipped
            y.sub_(mean).div_(std)
        return out

    def _crop_grid(self, x: torch.Tensor, params: dict) -> torch.Tensor:
        """(B, S, S, 2) sampling grid of each sample's crop box, flipped or not."""
        b, (h, w) = x.shape[0], x.shape[-2:]
        area, ratio = params["area"], params["ratio"]
        # crop width / height as fractions of the image side (area fraction x aspect ratio)
        cw = torch.sqrt(area * ratio * (h / w))
        ch = torch.sqrt(area / ratio * (w / h))
        ok = (cw <= 1) & (ch <= 1)
        first = torch.argmax(ok.int(), dim=1, keepdim=True)
        found = ok.any(dim=1)
        cw = torch.where(found, cw.gather(1, first).squeeze(1), torch.ones(b, device=x.device))
        ch = torch.where(found, ch.gather(1, first).squeeze(1), torch.ones(b, device=x.device))
        cx = (params["cx"] * 2 - 1) * (1 - cw)
        cy = (params["cy"] * 2 - 1) * (1 - ch)
        sign = 1.0 - 2.0 * params["flip"].to(x.dtype)
        s = self.image_size
        base = (torch.arange(s, device=x.device, dtype=x.dtype) * 2 + 1) / s - 1  # pixel centres
        gx = (cw * sign)[:, None] * base + cx[:, None]  # (B, S): x of output column j
        gy = ch[:, None] * base + cy[:, None]  # (B, S): y of output row i
        return torch.stack(torch.broadcast_tensors(gx[:, None, :], gy[:, :, None]), dim=-1)


def overrides_of(augment: ViewAugment) -> dict[str, Any]:
    """The recipe values of ``augment`` that differ from its kind's defaults."""
    defaults = dict(RECIPES[augment.kind])
    if defaults["blur_sigma"] is None:
        defaults["blur_sigma"] = (0.1 * augment.image_size / 32, 1.0 * augment.image_size / 32)
    return {k: v for k, v in augment.params.items() if _check(dict(defaults))[k] != v}


def make_views(
    images: torch.Tensor,
    augments: Sequence[ViewAugment],
    generator: torch.Generator,
    *,
    offset: int = 0,
    total: int | None = None,
) -> torch.Tensor:
    """V augmented views of each image: uint8 (B, 3, H, W) -> float32 (B, V, 3, S, S).

    View v is ``augments[v]`` applied to the whole batch; the augments draw
    their parameters from ``generator`` in order, so the same seed gives the
    same views (on the same device).

    ``images`` may be a shard of a larger batch (one rank's slice under
    torchrun): rows ``offset`` to ``offset + B`` of a batch of ``total`` images.
    The parameters are then drawn for all ``total`` images, in the same order,
    and the shard keeps its rows' parameters, so an image's views do not depend
    on how the batch is split between processes.
    """
    if not augments:
        raise ValueError("augments: expected at least one ViewAugment, got none")
    sizes = {a.image_size for a in augments}
    if len(sizes) != 1:
        raise ValueError(f"augments: all views need one image_size, got {sorted(sizes)}")
    x = _unit(images)
    b = x.shape[0]
    total = b if total is None else total
    if offset < 0 or offset + b > total:
        raise ValueError(
            f"offset, total: rows {offset}..{offset + b} are not in a batch of {total}"
        )
    size = sizes.pop()
    out = torch.empty(b, len(augments), 3, size, size, device=x.device)
    for v, augment in enumerate(augments):
        params = augment.sample(total, generator, x.device)
        mine = {key: value[offset : offset + b] for key, value in params.items()}
        augment.apply(x, mine, out[:, v])
    return out


class _Draws:
    """Per-sample uniforms from one generator, created on its device, moved to the data's."""

    def __init__(self, generator: torch.Generator, batch: int, device: torch.device) -> None:
        self.generator, self.batch, self.device = generator, batch, device

    def rand(self, *extra: int) -> torch.Tensor:
        g = self.generator
        return torch.rand(self.batch, *extra, generator=g, device=g.device).to(self.device)

    def uniform(self, low: float, high: float, *extra: int) -> torch.Tensor:
        return low + (high - low) * self.rand(*extra)


def _unit(images: torch.Tensor) -> torch.Tensor:
    if images.dtype == torch.uint8:
        return images.float().div_(255)
    if images.is_floating_point():
        return images.float()
    raise ValueError(f"images: expected uint8 (or float in [0, 1]), got {images.dtype}")


_CONSTANTS = {"mean": MEAN, "std": STD, "luma": _LUMA, "identity": (1.0, 1.0, 1.0, 0.0)}
_ON_DEVICE: dict[tuple[str, str], torch.Tensor] = {}


def _constant(name: str, device: torch.device) -> torch.Tensor:
    """A small constant, copied to each device once (a host-to-GPU copy would stall the stream)."""
    key = (name, str(device))
    if key not in _ON_DEVICE:
        _ON_DEVICE[key] = torch.tensor(_CONSTANTS[name], device=device)
    return _ON_DEVICE[key]


def _mean_std(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    return _constant("mean", device), _constant("std", device)


def _normalise(x: torch.Tensor, out: torch.Tensor | None = None) -> torch.Tensor:
    mean, std = _mean_std(x.device)
    out = torch.sub(x, mean.view(1, 3, 1, 1), out=out)
    return out.div_(std.view(1, 3, 1, 1))


def colour_jitter(
    x: torch.Tensor,
    factors: torch.Tensor,
    order: torch.Tensor,
    gray: torch.Tensor,
    hue: bool = True,
    normalise: bool = False,
) -> torch.Tensor:
    """Per-sample colour jitter then grayscale, on float images in [0, 1].

    Brightness, contrast and saturation are affine per sample (contrast blends
    with the mean gray of the image as it is at that step), so the ones before
    and after the hue shift each fold into one 3x4 matrix applied by one
    batched matmul; the hue shift is torchvision's HSV rotation, vectorised.
    Grayscale (and, with ``normalise``, the MEAN / STD normalisation) folds into
    the last matrix. Values are clamped to [0, 1] after each matmul.

    Args:
        x: (B, 3, H, W) float in [0, 1].
        factors: (B, 4) brightness, contrast, saturation factors and hue shift (turns).
        order: (B, 4) a permutation of the four operations (0 b, 1 c, 2 s, 3 h) per sample.
        gray: (B,) bool, convert to 3-channel grayscale after the jitter.
        hue: False skips the hue step (all shifts are 0): one matmul in all.
        normalise: return normalised values instead of [0, 1] ones.

    Example:
        >>> x = torch.full((1, 3, 2, 2), 0.5)
        >>> colour_jitter(x, torch.tensor([[1.2, 1.0, 1.0, 0.0]]), torch.tensor([[0, 1, 2, 3]]),
        ...               torch.tensor([False]))[0, :, 0, 0]
        tensor([0.6000, 0.6000, 0.6000])
    """
    out = x.clone()
    chunks = _chunks(x.shape[0], x.shape[-1] * x.shape[-2], x.device)
    _colour_in_place(out, factors, order, gray, hue=hue, normalise=normalise, chunks=chunks)
    return out


def _chunks(batch: int, pixels: int, device: torch.device) -> list[slice]:
    """Row slices covering the batch: one on accelerators, ~2**17 pixels each on CPU."""
    step = batch if device.type != "cpu" else max(1, _CHUNK_PIXELS // max(1, pixels))
    return [slice(start, start + step) for start in range(0, batch, step)]


def _colour_in_place(
    images: torch.Tensor,
    factors: torch.Tensor,
    order: torch.Tensor,
    gray: torch.Tensor,
    hue: bool,
    normalise: bool,
    chunks: Sequence[slice],
) -> None:
    """:func:`colour_jitter` written back into ``images`` (B, 3, H, W), chunk by chunk."""
    b = images.shape[0]
    flat = images.view(b, 3, -1)
    position = torch.arange(4, device=images.device).expand(b, 4)
    if hue:
        hue_at = torch.argmax((order == 3).int(), dim=1, keepdim=True)
        first = _affine_ops(flat.mean(-1), factors, order, position < hue_at)
        for rows in chunks:
            flat[rows] = _shift_hue(_apply(first[rows], flat[rows]), factors[rows, 3])
        active = position > hue_at
    else:
        active = torch.ones_like(position, dtype=torch.bool)
    last = _affine_ops(flat.mean(-1), factors, order, active)
    last = torch.where(gray[:, None, None], _gray_matrix(images.device) @ last, last)
    low, high = 0.0, 1.0
    if normalise:
        mean, std = _mean_std(images.device)
        scale = torch.eye(4, device=images.device)
        scale[:3, :3] = torch.diag(1 / std)
        scale[:3, 3] = -mean / std
        last = scale @ last
        low, high = (-mean / std).view(1, 3, 1), ((1 - mean) / std).view(1, 3, 1)
    for rows in chunks:
        part = last[rows]
        flat[rows] = torch.baddbmm(part[:, :3, 3:], part[:, :3, :3], flat[rows]).clamp_(low, high)


def _apply(matrix: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
    return torch.baddbmm(matrix[:, :3, 3:], matrix[:, :3, :3], flat).clamp_(0, 1)


def _gray_matrix(device: torch.device) -> torch.Tensor:
    to_gray = torch.zeros(4, 4, device=device)
    to_gray[:3, :3] = _constant("luma", device).expand(3, 3)
    to_gray[3, 3] = 1
    return to_gray


def _affine_ops(
    means: torch.Tensor, factors: torch.Tensor, order: torch.Tensor, active: torch.Tensor
) -> torch.Tensor:
    """(B, 4, 4) homogeneous composition of the active brightness / contrast / saturation steps.

    Args:
        means: (B, 3) per-channel means of the images the first step sees.
        factors: (B, 4) as in :func:`colour_jitter` (the hue column is ignored).
        order: (B, 4) operation per position; ``active`` (B, 4) marks the positions to apply.
    """
    b, device = means.shape[0], means.device
    luma = _constant("luma", device)
    eye3 = torch.eye(3, device=device)
    f = factors[:, :3, None, None]
    candidates = torch.stack(  # (B, 4, 3, 3): brightness, contrast, saturation, hue (identity)
        [
            f[:, 0] * eye3,
            f[:, 1] * eye3,
            f[:, 2] * eye3 + (1 - f[:, 2]) * luma,
            eye3.expand(b, 3, 3),
        ],
        dim=1,
    )
    steps = candidates[torch.arange(b, device=device)[:, None], order]  # (B, 4, 3, 3) in order
    steps = torch.where(active[:, :, None, None], steps, eye3)
    contrast_gain = torch.where((order == 1) & active, 1 - factors[:, 1:2], 0.0)  # (B, 4)
    linear, offset = eye3.expand(b, 3, 3), torch.zeros(b, 3, device=device)
    for k in range(4):  # contrast blends with the mean gray of the image as it is at step k
        gray_now = (linear @ means[:, :, None]).squeeze(-1).add_(offset) @ luma  # (B,)
        linear = steps[:, k] @ linear
        offset = (
            (steps[:, k] @ offset[:, :, None])
            .squeeze(-1)
            .add_((contrast_gain[:, k] * gray_now)[:, None])
        )
    total = torch.zeros(b, 4, 4, device=device)
    total[:, :3, :3], total[:, :3, 3], total[:, 3, 3] = linear, offset, 1.0
    return total


def _shift_hue(flat: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the HSV hue of (B, 3, N) images in [0, 1] by ``shift`` (B,) turns.

    Same result as torchvision's ``adjust_hue`` (RGB -> HSV, shift, HSV -> RGB),
    written without comparisons or ``torch.where`` and with few temporaries
    (several times faster on CPU): ``floor(r - max + 1)`` is 1 exactly where
    red is the largest channel. Red wins ties, then green, as in torchvision.
    """
    r, g, b = flat.unbind(1)
    maxc = torch.maximum(r, g)
    torch.maximum(maxc, b, out=maxc)
    delta = torch.minimum(r, g)
    torch.minimum(delta, b, out=delta)
    delta.neg_().add_(maxc)
    h = torch.sub(r, g).add_(delta, alpha=4)  # hue x delta where blue is the maximum
    t = torch.sub(b, r).add_(delta, alpha=2).sub_(h)  # (green's formula) - h
    mask = torch.sub(g, maxc).add_(1).floor_()  # 1 where green is the maximum
    h.addcmul_(t, mask)
    torch.sub(g, b, out=t).sub_(h)  # (red's formula) - h
    torch.sub(r, maxc, out=mask).add_(1).floor_()  # 1 where red is the maximum
    h.addcmul_(t, mask)
    h.mul_(torch.clamp_min(delta, 1e-12, out=mask).reciprocal_()).add_(shift[:, None] * 6)
    torch.mul(h, 1 / 6, out=t).floor_()
    h.sub_(t, alpha=6)  # hue in sextants, wrapped into [0, 6)
    out = torch.empty_like(flat)
    for channel, centre in enumerate((0.0, 2.0, 4.0)):  # red, green and blue sit at 0, 2, 4
        torch.sub(h, centre, out=t).abs_()  # distance d; the ramp is clamp(min(d, 6 - d) - 1)
        torch.neg(t, out=mask).add_(5)
        torch.minimum(t.sub_(1), mask, out=t).clamp_(0, 1)
        torch.addcmul(maxc, delta, t, value=-1, out=out[:, channel])
    return out


def _blur(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """Separable Gaussian blur with a per-sample sigma in pixels (0 = unchanged)."""
    b, c, h, w = x.shape
    radius = min(int(math.ceil(3 * float(sigma.max()))), min(h, w) - 1)
    if radius < 1:
        return x
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    safe = sigma.clamp_min(1e-3)[:, None]
    kernel = torch.exp(-0.5 * (offsets[None] / safe) ** 2)
    kernel = torch.where(sigma[:, None] > 0, kernel, (offsets[None] == 0).to(x.dtype))
    kernel = (kernel / kernel.sum(1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    flat = x.reshape(1, b * c, h, w)
    flat = F.pad(flat, (radius, radius, 0, 0), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, 1, -1), groups=b * c)
    flat = F.pad(flat, (0, 0, radius, radius), mode="reflect")
    flat = F.conv2d(flat, kernel.view(b * c, 1, -1, 1), groups=b * c)
    return flat.view(b, c, h, w)


def _check(p: dict[str, Any]) -> dict[str, Any]:
    """Validate recipe values; ValueError naming the key."""
    for key in ("flip_prob", "jitter_prob", "gray_prob", "blur_prob", "solarize_prob"):
        if not 0.0 <= float(p[key]) <= 1.0:
            raise ValueError(
                f"augment.overrides.{key}: expected a probability in [0, 1], got {p[key]}"
            )
        p[key] = float(p[key])
    for key in ("brightness", "contrast", "saturation"):
        if float(p[key]) < 0:
            raise ValueError(f"augment.overrides.{key}: expected >= 0, got {p[key]}")
    if not 0.0 <= float(p["hue"]) <= 0.5:
        raise ValueError(f"augment.overrides.hue: expected in [0, 0.5], got {p['hue']}")
    for key, low_ok in (("crop_scale", 0.0), ("crop_ratio", 0.0), ("blur_sigma", -1e-12)):
        pair = tuple(float(v) for v in p[key])
        if len(pair) != 2 or pair[0] > pair[1] or pair[0] <= low_ok:
            raise ValueError(
                f"augment.overrides.{key}: expected (low, high), 0 < low <= high, got {p[key]}"
            )
        p[key] = pair
    if p["crop_scale"][1] > 1:
        raise ValueError(
            f"augment.overrides.crop_scale: expected values <= 1, got {p['crop_scale']}"
        )
    return p
