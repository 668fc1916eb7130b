"""The table of ``crdistance evaluate``: its columns, the mean rows of several
categories, the text table and the CSV file."""

import csv

import numpy as np

COLUMNS = {
    "category": "",
    "method": "",
    "image AUROC": ".3f",
    "pixel AUROC": ".3f",
    "AUPRO": ".3f",
    "fit s": ".2f",
    "distance ms/image": ".2f",
    "state bytes": ",d",
}
"""Columns of the table and the format of their values."""
MEAN = "mean"
"""The category of the rows that average a method over the categories."""
PIXEL_METRICS = ("pixel AUROC", "AUPRO")


def mean_row(rows, *, fit_seconds, state_bytes, n_images):
    """The ``mean`` row of one method over its category rows.

    Image AUROC is the mean over the categories, the pixel metrics the mean
    over the categories that have them (None if none has); the distance time
    is per test image of all categories (`n_images` per row); fit seconds and
    state bytes are those of the one fitted model.
    """
    row = {"category": MEAN, "method": rows[0]["method"],
           "image AUROC": float(np.mean([line["image AUROC"] for line in rows]))}
    for metric in PIXEL_METRICS:
        values = [line[metric] for line in rows if line[metric] is not None]
        row[metric] = float(np.mean(values)) if values else None
    total_ms = sum(line["distance ms/image"] * n
                   for line, n in zip(rows, n_images, strict=True))
    return row | {"fit s": fit_seconds,
                  "distance ms/image": total_ms / sum(n_images),
                  "state bytes": state_bytes}


def format_table(rows):
    """The rows as a text table: names left-aligned, numbers right-aligned;
    the category column only when the rows have more than one."""
    columns = dict(COLUMNS)
    if len({row.get("category") for row in rows}) < 2:
        del columns["category"]
    cells = [
        [("" if row.get(name) is None else format(row[name], spec))
         for name, spec in columns.items()]
        for row in rows
    ]
    widths = [
        max(len(name), *(len(line[i]) for line in cells))
        for i, name in enumerate(columns)
    ]
    left = sum(spec == "" for spec in columns.values())

    def join(values):
        return "  ".join(
            value.ljust(width) if i < left else value.rjust(width)
            for i, (value, width) in enumerate(zip(values, widths, strict=True))
        )

    return "\n".join([join(columns), join("-" * w for w in widths), *map(join, cells)])


def write_csv(rows, path):
    """Write the rows to a CSV file with the columns of ``COLUMNS``."""
    with open(path, "w", newline="") as file:
        writer = csv.DictWriter(file, fieldnames=list(COLUMNS))
        writer.writeheader()
        writer.writerows(rows)
    return path


def state_bytes(detector):
    """Bytes of the fitted arrays of a detector: its attributes ending in ``_``
    that are arrays, or lists or dicts of arrays (and the fitted detectors in
    the list of a PerCategoryDetector)."""
    if hasattr(detector, "state_parts"):  # a detector on an embedding
        return sum(state_bytes(part) for part in detector.state_parts())
    values = []
    for name, value in vars(detector).items():
        if name.endswith("_"):
            value = list(value.values()) if isinstance(value, dict) else value
            values += value if isinstance(value, list) else [value]
    return int(sum(
        value.nbytes if hasattr(value, "nbytes")
        else state_bytes(value) if hasattr(value, "score_patches") else 0
        for value in values
    ))
