"""The embedded dataset: procedurally drawn objects with several attributes.

Every command's default data, generated on the fly (no download) and
deterministic for a seed. Each 32 px colour image shows one object on a
cluttered background; the object has four categorical attributes of different
granularity and one continuous one, modelled on UT-Zappos50k's structure
(a coarse, a medium and a fine label on the same object):

==============  =======  ==============================================================
column          classes  what it is
==============  =======  ==============================================================
``shape``       8        arch, bar, crescent, cross, half_disc, square, star, triangle
``color``       8        hue class, 45 degrees apart (red, orange, lime, green, cyan, ...)
``size``        3        object radius 0.18 / 0.27 / 0.40 of the image side (±8 %)
``pattern``     12       texture inside the object (stripes, dots, checker, rings, ...)
``shape_color`` 64       the shape x colour combination (a fine-grained similarity)
``angle``       float    rotation of the object in degrees, uniform in [0, 35)
==============  =======  ==============================================================

``structure`` chooses the label columns derived from these attributes (the images
are the same for every structure):

* ``standard`` (default): the columns above; the suite trains on a fine
  similarity (``shape_color``) that nests a medium one (``color``) and a coarse
  one (``size``) that is not nested in it.
* ``grouped``: also two coarse groupings nested in ``shape_color``: ``tone`` (3
  classes: warm = red, orange, magenta; green = lime, green, cyan; blue = azure,
  violet), readable from the colour from the first steps, and ``form`` (3
  classes: round = arch, crescent, half_disc; straight = bar, cross, square;
  pointed = star, triangle), which needs the shape.

Nuisance variation (so no attribute is readable from raw pixels by a linear
model): position, background hue / brightness / gradient / low-frequency blotches,
object saturation and brightness, +-6 degrees of hue within a colour class,
+-8 % size within a size class, anisotropic stretch and shear, the pattern's
phase, and pixel noise. The default experiment trains on ``shape``, ``color``
and ``size`` and evaluates ``pattern`` out-of-domain (visible, never trained).

Image ``i`` depends only on ``(seed, i)`` and the image size: a larger dataset
with the same seed starts with the same images.

Example:
    >>> data = make_synthetic(16, seed=0, image_size=16)
    >>> data.images.shape, data.images.dtype
    (torch.Size([16, 3, 16, 16]), torch.uint8)
    >>> [len(data.classes[c]) for c in ("shape", "color", "size", "pattern", "shape_color")]
    [8, 8, 3, 12, 64]
    >>> data.is_continuous("angle")
    True

The example figure and the baseline table of docs/data.md (raw-pixel linear
probes, a small supervised CNN) are made by ``benchmarks/synthetic_baselines.py``.
"""

from __future__ import annotations

import colorsys
import math
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch

from mscon.data.dataset import LabelledImages, seeded_split

SHAPES = ("arch", "bar", "crescent", "cross", "half_disc", "square", "star", "triangle")
HUES = {
    "red": 0.0,
    "orange": 45.0,
    "lime": 90.0,
    "green": 135.0,
    "cyan": 180.0,
    "azure": 225.0,
    "violet": 270.0,
    "magenta": 315.0,
}
COLORS = tuple(sorted(HUES))
RADII = {"small": 0.18, "medium": 0.27, "large": 0.40}
SIZES = tuple(sorted(RADII))
PATTERNS = (
    "checker",
    "crosshatch",
    "dots",
    "gradient",
    "grid",
    "hstripes",
    "outline",
    "rings",
    "solid",
    "speckle",
    "spokes",
    "vstripes",
)
ATTRIBUTES: dict[str, tuple[str, ...]] = {
    "shape": SHAPES,
    "color": COLORS,
    "size": SIZES,
    "pattern": PATTERNS,
}
ANGLE_RANGE = (0.0, 35.0)
DEFAULT_COMBOS: tuple[tuple[str, str], ...] = (("shape", "color"),)
# a grouping column: (the attribute it groups, {group name: the attribute's classes})
GROUPINGS: dict[str, tuple[str, dict[str, tuple[str, ...]]]] = {
    "tone": (
        "color",
        {
            "blue": ("azure", "violet"),
            "green": ("cyan", "green", "lime"),
            "warm": ("magenta", "orange", "red"),
        },
    ),
    "form": (
        "shape",
        {
            "pointed": ("star", "triangle"),
            "round": ("arch", "crescent", "half_disc"),
            "straight": ("bar", "cross", "square"),
        },
    ),
}
# structure -> the grouping columns it adds (see the module docstring)
STRUCTURES: dict[str, tuple[str, ...]] = {"standard": (), "grouped": ("form", "tone")}
BLOCK = 1000  # images drawn per seeded block: image i depends only on (seed, i)
PERIODS = 8.0  # pattern periods across the image side
INK = 0.55  # how much the pattern darkens the object colour


def make_synthetic(
    size: int,
    seed: int = 0,
    image_size: int = 32,
    split: Mapping[str, float] | None = None,
    combos: Sequence[tuple[str, str]] = DEFAULT_COMBOS,
    structure: str = "standard",
) -> LabelledImages:
    """The embedded dataset as :class:`LabelledImages`, split by seeded fractions.

    Args:
        size: number of images.
        seed: generation seed (the split is shuffled by it too).
        image_size: side in pixels.
        split: {train, val, test} fractions; default 0.7 / 0.1 / 0.2.
        combos: pairs of attributes exposed as a combined column ``A_B``.
        structure: a key of :data:`STRUCTURES`: ``standard`` or ``grouped`` (adds the
            coarse groupings ``form`` and ``tone``).

    Returns:
        LabelledImages with columns shape, color, size, pattern, the combos, the
        structure's groupings, angle.

    Example:
        >>> data = make_synthetic(16, image_size=8, structure="grouped")
        >>> data.classes["tone"], len(data.classes["form"])
        (['blue', 'green', 'warm'], 3)
    """
    if structure not in STRUCTURES:
        raise ValueError(f"structure: expected one of {', '.join(STRUCTURES)}, got {structure!r}")
    images, attrs = _cached_render(size, seed, image_size)
    labels, classes = _columns(attrs, combos, STRUCTURES[structure])
    return LabelledImages(
        images=images,
        labels=labels,
        classes=classes,
        split=seeded_split(size, split, seed),
        source="synthetic",
    )


def render(size: int, seed: int = 0, image_size: int = 32) -> tuple[torch.Tensor, dict]:
    """Draw ``size`` images: uint8 (size, 3, S, S) and the attribute arrays.

    Returns:
        images and a dict of numpy arrays: shape, color, size, pattern (class
        indices into the sorted names of :data:`ATTRIBUTES`) and angle (degrees).
    """
    if size < 1 or image_size < 4:
        raise ValueError(f"size and image_size must be positive, got {size}, {image_size}")
    images = torch.empty(size, 3, image_size, image_size, dtype=torch.uint8)
    attrs: dict[str, list[np.ndarray]] = {k: [] for k in (*ATTRIBUTES, "angle")}
    for block in range(math.ceil(size / BLOCK)):
        count = min(BLOCK, size - block * BLOCK)
        params = _draw(np.random.default_rng([seed, block]), image_size)
        params = {k: v[:count] for k, v in params.items()}
        step = max(16, 2**19 // (image_size * image_size))
        for start in range(0, count, step):
            part = {k: v[start : start + step] for k, v in params.items()}
            row = block * BLOCK + start
            images[row : row + len(part["shape"])] = _render(part, image_size)
        for key in attrs:
            attrs[key].append(params[key])
    return images, {k: np.concatenate(v) for k, v in attrs.items()}


def write_synthetic(
    out: str | Path, size: int, seed: int = 0, image_size: int = 32, structure: str = "standard"
) -> Path:
    """Write the embedded dataset (of ``structure``) as a manifest folder; returns the folder.

    ``images/NNNNNN.png`` plus ``labels.csv`` with a ``split`` column (the
    default 0.7 / 0.1 / 0.2 fractions shuffled by ``seed``), class names as
    cells and ``angle`` in degrees with two decimals. Loading the folder gives
    the same labels, classes and split as ``load_dataset(None, ...)``.

    Example:
        >>> import tempfile
        >>> folder = write_synthetic(tempfile.mkdtemp(), size=8, seed=0, image_size=16)
        >>> (folder / "labels.csv").read_text().splitlines()[0]
        'path,split,shape,color,size,pattern,shape_color,angle'
    """
    from concurrent.futures import ThreadPoolExecutor

    from PIL import Image

    from mscon.data.manifest import write_manifest

    if size < 1:
        raise ValueError(f"size: expected a positive number of images, got {size}")
    folder = Path(out)
    (folder / "images").mkdir(parents=True, exist_ok=True)
    data = make_synthetic(size, seed=seed, image_size=image_size, structure=structure)
    width = max(6, len(str(size - 1)))
    paths = [f"images/{i:0{width}d}.png" for i in range(size)]
    pixels = data.images.permute(0, 2, 3, 1).numpy()

    def save(i: int) -> None:
        Image.fromarray(pixels[i]).save(folder / paths[i], compress_level=1)

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(save, range(size), chunksize=256))
    labels: dict[str, list] = {}
    for column in data.columns():
        values = data.labels[column]
        if data.is_continuous(column):
            labels[column] = [f"{v:.2f}" for v in values.tolist()]
        else:
            labels[column] = [data.classes[column][i] for i in values.tolist()]
    write_manifest(folder, paths, labels, split=list(data.split))
    return folder


_CACHE: OrderedDict[tuple[int, int, int], tuple[torch.Tensor, dict]] = OrderedDict()


def _cached_render(size: int, seed: int, image_size: int) -> tuple[torch.Tensor, dict]:
    """:func:`render` with a two-entry in-process cache (runs of one demo share it)."""
    key = (size, seed, image_size)
    if key not in _CACHE:
        _CACHE[key] = render(size, seed, image_size)
        while len(_CACHE) > 2:
            _CACHE.popitem(last=False)
    _CACHE.move_to_end(key)
    return _CACHE[key]


def _columns(
    attrs: Mapping[str, np.ndarray],
    combos: Sequence[tuple[str, str]],
    groupings: Sequence[str] = (),
) -> tuple[dict[str, torch.Tensor], dict[str, list[str]]]:
    """Label tensors and class names; combos are ``A_B`` columns with sorted names,
    groupings (keys of :data:`GROUPINGS`) map an attribute's classes to groups."""
    labels = {k: torch.as_tensor(attrs[k], dtype=torch.long) for k in ATTRIBUTES}
    classes = {k: list(v) for k, v in ATTRIBUTES.items()}
    for a, b in combos:
        if a not in ATTRIBUTES or b not in ATTRIBUTES or a == b:
            raise ValueError(f"combos: expected two different of {list(ATTRIBUTES)}, got {a, b}")
        names = [f"{x}_{y}" for x in ATTRIBUTES[a] for y in ATTRIBUTES[b]]
        order = sorted(names)
        rank = torch.as_tensor([order.index(n) for n in names])
        labels[f"{a}_{b}"] = rank[labels[a] * len(ATTRIBUTES[b]) + labels[b]]
        classes[f"{a}_{b}"] = order
    for name in groupings:
        attribute, groups = GROUPINGS[name]
        order = sorted(groups)
        group_of = {member: order.index(g) for g, members in groups.items() for member in members}
        lookup = torch.as_tensor([group_of[c] for c in ATTRIBUTES[attribute]])
        labels[name] = lookup[labels[attribute]]
        classes[name] = order
    labels["angle"] = torch.as_tensor(attrs["angle"], dtype=torch.float32)
    return labels, classes


def _hsv(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV (h in degrees) -> RGB in [0, 1], shape (n, 3)."""
    return np.array([colorsys.hsv_to_rgb(*x) for x in zip(h / 360.0 % 1.0, s, v, strict=True)])


def _draw(rng: np.random.Generator, image_size: int) -> dict[str, np.ndarray]:
    """All random parameters of one block of :data:`BLOCK` images (fixed draw order)."""
    n, s = BLOCK, image_size
    p: dict[str, np.ndarray] = {}
    for key, names in ATTRIBUTES.items():
        p[key] = rng.integers(0, len(names), n)
    p["angle"] = np.round(rng.uniform(*ANGLE_RANGE, n), 2)
    hue = np.array([HUES[c] for c in COLORS])[p["color"]] + rng.uniform(-6, 6, n)
    p["rgb"] = _hsv(hue, rng.uniform(0.6, 1.0, n), rng.uniform(0.6, 1.0, n))
    radius = np.array([RADII[k] for k in SIZES])[p["size"]] * rng.uniform(0.92, 1.08, n)
    p["radius"] = radius
    margin = 0.85 * radius
    p["center"] = margin[:, None] + rng.uniform(0, 1, (n, 2)) * (1 - 2 * margin[:, None])
    aspect = np.exp(rng.uniform(-0.1, 0.1, n))
    shear = rng.uniform(-0.1, 0.1, n)
    p["inverse"] = _inverse_maps(np.deg2rad(p["angle"]), aspect, shear, radius)
    p["background"] = _hsv(
        rng.uniform(0, 360, n), rng.uniform(0, 0.5, n), rng.uniform(0.15, 0.85, n)
    )
    p["gradient"] = rng.uniform(-0.3, 0.3, (n, 2))
    p["blotches"] = rng.normal(0, 0.09, (n, 3, 4, 4))
    p["phase"] = rng.uniform(0, 1, (n, 2))
    p["sigma"] = rng.uniform(0.01, 0.05, n)
    p["noise"] = rng.standard_normal((n, 3, s, s), dtype=np.float32)
    p["speckle"] = rng.random((n, s, s), dtype=np.float32)
    return p


def _inverse_maps(
    theta: np.ndarray, aspect: np.ndarray, shear: np.ndarray, radius: np.ndarray
) -> np.ndarray:
    """(n, 2, 2) maps from image offsets to shape coordinates (object radius = 1)."""
    cos, sin = np.cos(-theta), np.sin(-theta)
    rot = np.stack([np.stack([cos, -sin], -1), np.stack([sin, cos], -1)], -2)
    unshear = np.zeros_like(rot)
    unshear[:, 0, 0], unshear[:, 0, 1], unshear[:, 1, 1] = 1.0, -shear, 1.0
    unstretch = np.zeros_like(rot)
    unstretch[:, 0, 0], unstretch[:, 1, 1] = 1 / aspect, aspect
    return unstretch @ unshear @ rot / radius[:, None, None]


def _render(p: Mapping[str, np.ndarray], s: int) -> torch.Tensor:
    """Render one chunk of parameters to uint8 (n, 3, s, s)."""
    t = {k: torch.as_tensor(np.asarray(v), dtype=torch.float32) for k, v in p.items()}
    n = len(p["shape"])
    grid = (torch.arange(s, dtype=torch.float32) + 0.5) / s
    gy, gx = grid.view(1, s, 1), grid.view(1, 1, s)
    dx = gx - t["center"][:, 0, None, None]
    dy = gy - t["center"][:, 1, None, None]
    m = t["inverse"]
    ux = m[:, 0, 0, None, None] * dx + m[:, 0, 1, None, None] * dy
    uy = m[:, 1, 0, None, None] * dx + m[:, 1, 1, None, None] * dy
    pixels = (t["radius"] * s)[:, None, None]  # shape units -> pixels
    dist = torch.empty(n, s, s)
    for k in range(len(SHAPES)):
        rows = torch.as_tensor(np.flatnonzero(p["shape"] == k))
        if len(rows):
            dist[rows] = _SDF[SHAPES[k]](ux[rows], uy[rows])
    dist = dist * pixels  # signed distance in pixels, < 0 inside
    mask = (0.5 - dist).clamp_(0, 1)
    theta = torch.deg2rad(t["angle"])[:, None, None]
    cos, sin = torch.cos(theta), torch.sin(theta)
    vx, vy = cos * dx + sin * dy, cos * dy - sin * dx  # image units, in the object's rotated frame
    ink = torch.zeros(n, s, s)
    for k in range(len(PATTERNS)):
        rows = np.flatnonzero(p["pattern"] == k)
        if len(rows) and PATTERNS[k] != "solid":
            sub = {key: t[key][rows] for key in ("phase", "radius", "speckle")}
            ink[rows] = _PATTERNS[PATTERNS[k]](vx[rows], vy[rows], sub, dist[rows], s)
    obj = t["rgb"][:, :, None, None] * (1 - INK * ink[:, None])
    bg = _background(t, gx, gy, s)
    img = bg + mask[:, None] * (obj - bg)
    img += t["sigma"][:, None, None, None] * t["noise"]
    return img.clamp_(0, 1).mul_(255).round_().to(torch.uint8)


def _background(t: Mapping[str, torch.Tensor], gx: torch.Tensor, gy: torch.Tensor, s: int):
    """Tinted background with a linear gradient and smooth colour blotches."""
    g = t["gradient"]
    shade = 1 + g[:, 0, None, None] * (gx - 0.5) + g[:, 1, None, None] * (gy - 0.5)
    blotches = torch.nn.functional.interpolate(
        t["blotches"], size=(s, s), mode="bicubic", align_corners=False
    )
    return t["background"][:, :, None, None] * shade[:, None] + blotches


def _box(x: torch.Tensor, y: torch.Tensor, hx: float, hy: float) -> torch.Tensor:
    return torch.maximum(x.abs() - hx, y.abs() - hy)


def _sdf_triangle(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Equilateral, circumradius 1, a vertex pointing up (y grows downwards)."""
    c = math.sqrt(3) / 2
    return torch.maximum(torch.maximum(y, c * x - 0.5 * y), -c * x - 0.5 * y) - 0.5


def _sdf_star(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Five-pointed star, outer radius 1, inner 0.42, a point up."""
    sector = 2 * math.pi / 5
    phi = torch.atan2(x, -y)
    folded = torch.remainder(phi + sector / 2, sector) - sector / 2
    folded = folded.abs()
    rho = torch.sqrt(x * x + y * y)
    qx, qy = rho * torch.sin(folded), rho * torch.cos(folded)
    bx, by = 0.42 * math.sin(sector / 2), 0.42 * math.cos(sector / 2)
    nx, ny = 1 - by, bx
    norm = math.hypot(nx, ny)
    return (qx * nx + (qy - 1) * ny) / norm


def _sdf_crescent(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A disc minus a smaller offset disc, opening to the right."""
    outer = torch.sqrt(x * x + y * y) - 1.0
    inner = torch.sqrt((x - 0.5) ** 2 + y * y) - 0.78
    return torch.maximum(outer, -inner)


def _sdf_arch(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """A thick ring with a gap at the bottom (a horseshoe)."""
    ring = (torch.sqrt(x * x + y * y) - 0.7).abs() - 0.27
    gap = torch.maximum(x.abs() - 0.3, -y)
    return torch.maximum(ring, -gap)


def _sdf_half_disc(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Upper half of a disc, flat edge at the bottom."""
    qy = y - 0.37
    return torch.maximum(torch.sqrt(x * x + qy * qy) - 0.93, qy)


_SDF = {
    "arch": _sdf_arch,
    "bar": lambda x, y: _box(x, y, 0.95, 0.38),
    "crescent": _sdf_crescent,
    "cross": lambda x, y: torch.minimum(_box(x, y, 0.95, 0.3), _box(x, y, 0.3, 0.95)),
    "half_disc": _sdf_half_disc,
    "square": lambda x, y: _box(x, y, 0.68, 0.68),
    "star": _sdf_star,
    "triangle": _sdf_triangle,
}


def _wave(t: torch.Tensor) -> torch.Tensor:
    """A square wave with soft edges, period 1, value 1 at t = 0."""
    return (0.5 + 1.5 * torch.cos(2 * math.pi * t)).clamp_(0, 1)


def _lines(a: torch.Tensor, b: torch.Tensor, width: float, s: int) -> torch.Tensor:
    """Soft lines where frac(a) or frac(b) is near 1/2 (period units)."""
    near = torch.minimum((torch.frac(a) - 0.5).abs(), (torch.frac(b) - 0.5).abs())
    return (0.5 + (width - near) * s / PERIODS).clamp_(0, 1)


def _pattern(name: str):
    def ink(vx, vy, p, dist, s):
        """vx, vy: (n, s, s) offsets from the object centre in its rotated frame."""
        fx = vx * PERIODS + p["phase"][:, 0, None, None]
        fy = vy * PERIODS + p["phase"][:, 1, None, None]
        if name == "hstripes":
            return _wave(fy)
        if name == "vstripes":
            return _wave(fx)
        if name == "checker":
            return (0.5 + 3 * torch.cos(2 * math.pi * fx) * torch.cos(2 * math.pi * fy)).clamp(0, 1)
        if name == "dots":
            d = torch.sqrt((torch.frac(fx) - 0.5) ** 2 + (torch.frac(fy) - 0.5) ** 2)
            return (0.5 + (0.28 - d) * s / PERIODS).clamp(0, 1)
        if name == "grid":
            return _lines(fx, fy, 0.12, s)
        if name == "crosshatch":
            return _lines((fx + fy) * 0.7071, (fx - fy) * 0.7071, 0.14, s)
        if name == "rings":
            rho = torch.sqrt(vx * vx + vy * vy) * PERIODS
            return _wave(rho + p["phase"][:, 0, None, None])
        if name == "spokes":
            return _wave(torch.atan2(vy, vx) * (8 / (2 * math.pi)))
        if name == "outline":
            return (-dist - 1.5).clamp(0, 1)
        if name == "gradient":
            return (vy / p["radius"][:, None, None] * 0.5 + 0.5).clamp(0, 1)
        if name == "speckle":
            return (p["speckle"] > 0.5).float()
        raise KeyError(name)

    return ink


_PATTERNS = {name: _pattern(name) for name in PATTERNS}
