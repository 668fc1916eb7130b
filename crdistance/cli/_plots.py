"""Pictures of the command line: heat-map overlays (Pillow) and figures (matplotlib).

Overlays need Pillow only, so ``crdistance predict`` draws without matplotlib;
the ROC curves and heat-map grids of ``crdistance evaluate`` need matplotlib,
imported when drawn.
"""

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from scipy.ndimage import binary_dilation, binary_erosion

# Stops of the colour map, low to high: dark blue, cyan, green, yellow, red.
HEAT_COLOURS = np.array(
    [[40, 30, 120], [30, 140, 230], [40, 200, 120], [240, 220, 40], [220, 40, 20]],
    dtype=float,
)
MAX_OPACITY = 0.7
MIN_PICTURE_SIDE = 320
REGION_COLOUR = (0, 255, 255)
MASK_COLOUR = (60, 255, 60)
VERDICT_COLOURS = {"anomalous": (220, 40, 20), "normal": (40, 170, 60)}


def heat_colours(values):
    """RGB colours (..., 3) of `values` in [0, 1] on the map of ``HEAT_COLOURS``."""
    stops = np.linspace(0.0, 1.0, len(HEAT_COLOURS))
    channels = [np.interp(values, stops, HEAT_COLOURS[:, c]) for c in range(3)]
    return np.stack(channels, axis=-1)


def overlay(image, heat, *, vmax, outlines=()):
    """The image under its heat map, with outlined regions.

    Parameters
    ----------
    image : ndarray of shape (height, width, 3), uint8
    heat : ndarray of shape (height, width)
        Anomaly map; 0 is transparent, `vmax` and above fully coloured.
    vmax : float
        Value of the top colour.
    outlines : sequence of (ndarray of bool (height, width), colour)
        Regions whose boundary is drawn, in order.

    Returns
    -------
    picture : ndarray of shape (height, width, 3), uint8
    """
    level = np.clip(heat / vmax, 0.0, 1.0) if vmax > 0 else np.zeros_like(heat)
    opacity = MAX_OPACITY * level[..., None]
    picture = image * (1.0 - opacity) + heat_colours(level) * opacity
    thickness = max(1, round(min(heat.shape) / 150))
    for region, colour in outlines:
        picture[_boundary(region, thickness)] = colour
    return picture.astype(np.uint8)


def _boundary(region, thickness):
    edge = region & ~binary_erosion(region, border_value=0)
    return binary_dilation(edge, iterations=thickness - 1) if thickness > 1 else edge


def save_prediction(path, image, heat, region, *, score, threshold, name):
    """Write the picture of one prediction: the image, and it under its heat map.

    The left half is the image, the right half the heat map over it (top
    colour at twice the threshold) with the region above the threshold
    outlined in cyan; captions give the file name, the score and the verdict.
    Images with a side below ``MIN_PICTURE_SIDE`` are enlarged by the integer
    factor ``picture_scale(image.shape)``.

    Returns
    -------
    verdict : {"anomalous", "normal"}
    """
    verdict = "anomalous" if score > threshold else "normal"
    right = overlay(image, heat, vmax=2 * threshold, outlines=[(region, REGION_COLOUR)])
    picture = Image.fromarray(np.concatenate([image, right], axis=1))
    scale = picture_scale(image.shape)
    height, width = image.shape[0] * scale, image.shape[1] * scale
    picture = picture.resize((2 * width, height), Image.Resampling.NEAREST)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=max(10, min(height, width) // 22))
    _caption(draw, (0, 0), name, font, (0, 0, 0))
    _caption(
        draw,
        (width, 0),
        f"{verdict.upper()}  CRD {score:.3g} (threshold {threshold:.3g})",
        font,
        VERDICT_COLOURS[verdict],
    )
    picture.save(path)
    return verdict


def picture_scale(shape):
    """Integer enlargement of an image of `shape` in a prediction picture."""
    return max(1, -(-MIN_PICTURE_SIDE // min(shape[:2])))


def _caption(draw, corner, text, font, background):
    _, top, right, bottom = draw.textbbox(corner, text, font=font)
    margin = max(2, (bottom - top) // 4)
    draw.rectangle(
        (corner[0], corner[1], right + 2 * margin, bottom + 2 * margin), fill=background
    )
    draw.text((corner[0] + margin, corner[1] + margin), text, font=font, fill="white")


def figure_class():
    """matplotlib's Figure (drawn without pyplot, so without a display)."""
    try:
        from matplotlib.figure import Figure
    except ImportError as exc:
        raise ImportError(
            "The evaluation figures need matplotlib: pip install 'crdistance[bench]' "
            "(or pip install matplotlib), or pass --no-figures."
        ) from exc
    return Figure


def save_curves(path, labels, curves):
    """Image ROC curves and per-region overlap curves of the methods.

    Parameters
    ----------
    path : path-like
        PNG written.
    labels : ndarray of shape (n_images,)
        1 for defective test images.
    curves : dict
        Method label to ``(image_scores, (fpr, pro), row)``, `row` a table
        row with ``"image AUROC"`` and ``"AUPRO"``; ``(fpr, pro)`` is None
        without ground-truth masks (the ROC panel alone is drawn then).
    """
    from sklearn.metrics import roc_curve

    with_pro = all(pro is not None for _, pro, _ in curves.values())
    fig = figure_class()(figsize=(10 if with_pro else 5, 4.5), layout="constrained")
    roc_axes, *pro_axes = fig.subplots(1, 2 if with_pro else 1, squeeze=False)[0]
    for label, (scores, pro_points, row) in curves.items():
        false_alarms, detections, _ = roc_curve(labels, scores)
        roc_axes.plot(
            false_alarms, detections, label=f"{label} ({row['image AUROC']:.3f})"
        )
        if with_pro:
            pro_axes[0].plot(*pro_points, label=f"{label} ({row['AUPRO']:.3f})")
    roc_axes.plot([0, 1], [0, 1], color="0.7", linestyle=":")
    roc_axes.set(
        xlabel="good images flagged",
        ylabel="defective images flagged",
        title="Image ROC (AUROC)",
    )
    for axes in pro_axes:
        axes.set(
            xlim=(0, 0.3),
            ylim=(0, 1),
            xlabel="good pixels flagged",
            ylabel="mean share of each defect flagged",
            title="Per-region overlap (AUPRO)",
        )
    for axes in (roc_axes, *pro_axes):
        axes.legend(loc="lower right", fontsize="small")
        axes.grid(alpha=0.3)
    fig.savefig(path, dpi=100)


def examples(labels, scores, per_row):
    """Indices of the images shown in a heat-map grid, by row title.

    Best detections are the defective images scoring highest; misses the
    defective images scoring lowest; false alarms the good images scoring
    highest.
    """
    labels, order = np.asarray(labels), np.argsort(-np.asarray(scores), kind="stable")
    defective = order[labels[order] == 1]
    good = order[labels[order] == 0]
    return {
        "best detections (defective, highest)": defective[:per_row],
        "worst misses (defective, lowest)": defective[::-1][:per_row],
        "worst false alarms (good, highest)": good[:per_row],
    }


def save_heatmap_grid(path, title, rows, *, vmax):
    """A grid of heat maps with ground-truth outlines, one titled row per kind.

    Parameters
    ----------
    path : path-like
        PNG written.
    title : str
        Figure title.
    rows : dict
        Row title to a list of ``(image, heat, mask, caption)``; a mask of
        None draws no outline.
    vmax : float
        Value of the top colour, the same for every cell.
    """
    n_columns = max(len(cells) for cells in rows.values())
    fig = figure_class()(
        figsize=(2.4 * n_columns, 2.6 * len(rows)), layout="constrained"
    )
    grid = fig.subplots(len(rows), n_columns, squeeze=False)
    for axes_row, (row_title, cells) in zip(grid, rows.items(), strict=True):
        axes_row[0].set_title(row_title, loc="left", fontsize="medium", pad=18)
        for axes in axes_row:
            axes.set_axis_off()
        for axes, (image, heat, mask, caption) in zip(axes_row, cells, strict=False):
            outlines = [] if mask is None else [(mask, MASK_COLOUR)]
            axes.imshow(overlay(image, heat, vmax=vmax, outlines=outlines))
            axes.text(
                0.5,
                -0.02,
                caption,
                transform=axes.transAxes,
                ha="center",
                va="top",
                fontsize="small",
            )
    fig.suptitle(f"{title}: heat map, ground truth outlined in green")
    fig.savefig(path, dpi=100)
