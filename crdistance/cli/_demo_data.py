"""A small deterministic inspection dataset: woven surfaces with synthetic defects.

Every image is a woven fabric texture (threads crossing over and under, with
grain, dye and lighting varying from image to image). Defective images carry
one defect of three kinds, drawn anti-aliased at four times the resolution:

- ``scratch``: a thin, light, slightly curved line;
- ``spot``: a soft dark stain;
- ``crack``: a dark jagged line with a branch.

The ground-truth mask of a defect is where its opacity exceeds one quarter.
The same seed always gives the same files.
"""

import math
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFilter
from scipy.ndimage import gaussian_filter

__all__ = ["DEFECT_TYPES", "write_demo_dataset"]

DEFECT_TYPES = ("scratch", "spot", "crack")
SUPERSAMPLING = 4
MASK_OPACITY = 0.25
THREAD_PERIOD = 8.0
FABRIC_COLOUR = np.array([168.0, 146.0, 112.0])
DEFECT_COLOURS = {
    "scratch": np.array([222.0, 212.0, 190.0]),
    "spot": np.array([112.0, 90.0, 66.0]),
    "crack": np.array([60.0, 50.0, 42.0]),
}


def write_demo_dataset(
    root, *, n_train=40, n_test_good=20, n_defective=20, size=128, seed=0
):
    """Write the demo inspection dataset in the MVTec AD layout.

    Parameters
    ----------
    root : str or path-like
        Folder created (with its parents) and filled with ``train/good``,
        ``test/good``, ``test/<defect>`` and ``ground_truth/<defect>``.
    n_train : int, default=40
        Good training images.
    n_test_good : int, default=20
        Good test images.
    n_defective : int, default=20
        Defective test images, dealt in turn to the types of ``DEFECT_TYPES``.
    size : int, default=128
        Side of the square RGB images, in pixels.
    seed : int, default=0
        Seed of every random choice.

    Returns
    -------
    root : pathlib.Path
        The dataset folder, readable by :func:`crdistance.datasets.load_mvtec`.

    Examples
    --------
    >>> import tempfile
    >>> from crdistance.cli._demo_data import write_demo_dataset
    >>> from crdistance.datasets import load_mvtec
    >>> with tempfile.TemporaryDirectory() as folder:
    ...     root = write_demo_dataset(folder, n_train=2, n_test_good=1, n_defective=3)
    ...     test = load_mvtec(root, "test")
    ...     print(test.defect_types.tolist(), test.masks[0].shape, test.masks[0].any())
    ['crack', 'good', 'scratch', 'spot'] (128, 128) True
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    for index in range(n_train):
        _save(surface(rng, size), root / "train" / "good" / f"{index:03d}.png")
    for index in range(n_test_good):
        _save(surface(rng, size), root / "test" / "good" / f"{index:03d}.png")
    for index in range(n_defective):
        kind = DEFECT_TYPES[index % len(DEFECT_TYPES)]
        image, mask = add_defect(surface(rng, size), kind, rng)
        name = f"{index // len(DEFECT_TYPES):03d}"
        _save(image, root / "test" / kind / f"{name}.png")
        _save(
            mask.astype(np.uint8) * 255,
            root / "ground_truth" / kind / f"{name}_mask.png",
        )
    return root


def surface(rng, size):
    """One good woven surface: uint8 RGB array (size, size, 3)."""
    angle = math.radians(rng.uniform(-4.0, 4.0))
    shift = rng.uniform(0.0, 2.0 * THREAD_PERIOD, size=2)
    rows, columns = np.mgrid[0:size, 0:size].astype(float)
    u = math.cos(angle) * columns + math.sin(angle) * rows + shift[0]
    v = -math.sin(angle) * columns + math.cos(angle) * rows + shift[1]
    warp = np.sin(math.pi * u / THREAD_PERIOD) ** 2
    weft = np.sin(math.pi * v / THREAD_PERIOD) ** 2
    over = np.sin(math.pi * u / (2 * THREAD_PERIOD)) * np.sin(
        math.pi * v / (2 * THREAD_PERIOD)
    )
    weave = np.where(over > 0, 0.35 + 0.65 * weft, 0.35 + 0.65 * warp)
    grain = gaussian_filter(rng.normal(size=(size, size)), sigma=(0.6, 2.0))
    lighting = 1.0 + rng.uniform(-0.08, 0.08) * (rows + columns - size) / size
    luminance = (0.72 + 0.32 * weave + 0.25 * grain) * lighting
    colour = FABRIC_COLOUR * rng.uniform(0.93, 1.07, size=3)
    return np.clip(luminance[..., None] * colour, 0, 255).astype(np.uint8)


def add_defect(image, kind, rng):
    """Paint one defect of `kind` on `image`; returns the image and its bool mask."""
    size = image.shape[0]
    opacity = _defect_opacity(kind, size, rng)
    colour = DEFECT_COLOURS[kind] * rng.uniform(0.9, 1.1)
    alpha = opacity[..., None]
    painted = image * (1.0 - alpha) + colour * alpha
    return np.clip(painted, 0, 255).astype(np.uint8), opacity > MASK_OPACITY


def _defect_opacity(kind, size, rng):
    """Opacity in [0, 1] of a defect, drawn at SUPERSAMPLING times `size`."""
    scale = SUPERSAMPLING
    canvas = Image.new("L", (size * scale, size * scale), 0)
    draw = ImageDraw.Draw(canvas)
    centre = rng.uniform(0.3 * size, 0.7 * size, size=2) * scale
    if kind == "scratch":
        length = rng.uniform(0.25, 0.45) * size * scale
        angle = rng.uniform(0, math.pi)
        bend = rng.uniform(-0.15, 0.15) * length
        points = _bent_line(centre, length, angle, bend)
        draw.line(points, fill=255, width=round(1.2 * scale), joint="curve")
    elif kind == "spot":
        radii = rng.uniform(0.03, 0.06, size=2) * size * scale
        box = [*(centre - radii), *(centre + radii)]
        draw.ellipse(box, fill=255)
        canvas = canvas.filter(ImageFilter.GaussianBlur(radius=1.2 * scale))
    elif kind == "crack":
        trunk = _random_walk(centre, rng.uniform(0, 2 * math.pi), 12, size, rng)
        branch = _random_walk(
            trunk[len(trunk) // 2], rng.uniform(0, 2 * math.pi), 5, size, rng
        )
        for points in (trunk, branch):
            draw.line(points, fill=255, width=round(1.4 * scale), joint="curve")
    else:
        raise ValueError(f"Unknown defect type {kind!r}; one of {DEFECT_TYPES}.")
    small = canvas.resize((size, size), Image.Resampling.BOX)
    return np.asarray(small, dtype=float) / 255.0


def _bent_line(centre, length, angle, bend, n_points=16):
    """Points of a quadratic curve of chord `length` through `centre`."""
    direction = np.array([math.cos(angle), math.sin(angle)])
    normal = np.array([-direction[1], direction[0]])
    t = np.linspace(-0.5, 0.5, n_points)[:, None]
    points = centre + t * length * direction + (1 - 4 * t**2) * bend * normal
    return [tuple(point) for point in points]


def _random_walk(start, heading, n_steps, size, rng):
    """A jagged polyline of `n_steps` steps of about size / 20 (supersampled)."""
    points = [tuple(start)]
    for _ in range(n_steps):
        heading += rng.uniform(-0.7, 0.7)
        step = rng.uniform(0.02, 0.05) * size * SUPERSAMPLING
        x, y = points[-1]
        points.append((x + step * math.cos(heading), y + step * math.sin(heading)))
    return points


def _save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)
