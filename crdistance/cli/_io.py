"""What the command line reads and tells: image files, messages, progress bars.

Results go to stdout (text, or JSON with ``--json``); messages and progress bars
go to stderr, and ``-q`` silences all of them but warnings and errors.
"""

import sys
from pathlib import Path

import numpy as np

from crdistance._progress import Progress
from crdistance.datasets import GOOD, IMAGE_SUFFIXES

SUFFIXES_TEXT = ", ".join(sorted(IMAGE_SUFFIXES))


class CommandError(Exception):
    """An error the user can act on: printed without a traceback, exit code 1."""


class UsageError(CommandError):
    """Options that do not go together: printed as one line, exit code 2 (as the
    usage errors of argparse)."""


class Console:
    """Where the command line writes messages, warnings and progress bars.

    Parameters
    ----------
    quiet : bool
        Silence messages and progress bars (warnings are still written).
    stream : file, default=sys.stderr
        Stream written to.
    """

    def __init__(self, quiet, stream=None):
        self.quiet = quiet
        self.stream = sys.stderr if stream is None else stream

    def info(self, message):
        if not self.quiet:
            print(message, file=self.stream, flush=True)

    def warn(self, message):
        print(f"warning: {message}", file=self.stream, flush=True)

    def progress(self, label, total, unit="images"):
        """A progress bar (``crdistance._progress.Progress``) on this console."""
        return Progress(label, total, unit=unit, stream=self.stream,
                        enabled=not self.quiet)


def list_images(folder):
    """Image files directly in `folder`, sorted by name."""
    return sorted(
        path
        for path in Path(folder).iterdir()
        if path.suffix.lower() in IMAGE_SUFFIXES and not path.name.startswith(".")
    )


def training_images(data_dir):
    """Good training images: ``DATA_DIR/train/good`` (MVTec AD layout) or DATA_DIR."""
    data_dir = Path(data_dir)
    if not data_dir.is_dir():
        raise CommandError(f"No folder {data_dir}.")
    folder = data_dir / "train" / GOOD
    if not folder.is_dir():
        folder = data_dir
    paths = list_images(folder)
    if not paths:
        raise CommandError(
            f"No training images in {folder}: put images of good parts "
            f"({SUFFIXES_TEXT}) in DATA_DIR/train/good (MVTec AD layout) or "
            "directly in DATA_DIR."
        )
    return paths


def query_images(arguments):
    """Image files named on the command line: files, and the images of folders.

    A file named twice (or also through its folder) is kept once.
    """
    paths = []
    for argument in map(Path, arguments):
        if argument.is_dir():
            found = list_images(argument)
            if not found:
                raise CommandError(
                    f"No images ({SUFFIXES_TEXT}) directly in {argument}; "
                    "subfolders are not searched."
                )
            paths += found
        elif argument.is_file():
            paths.append(argument)
        else:
            raise CommandError(f"No such file or folder: {argument}.")
    return list(dict.fromkeys(paths))


class ImageReader:
    """Reads image files as RGB arrays, skipping unreadable ones or failing.

    Parameters
    ----------
    skip_unreadable : bool
        Skip a file that cannot be read as an image (and list it in
        ``skipped``) instead of failing with its name.

    Attributes
    ----------
    skipped : list of (pathlib.Path, str)
        Files skipped so far, with the reason.
    """

    def __init__(self, skip_unreadable):
        from PIL import Image

        self.skip_unreadable = skip_unreadable
        self.skipped = []
        self._errors = (OSError, ValueError, Image.DecompressionBombError)

    def read(self, path):
        """Image `path` as a uint8 array (height, width, 3), or None if skipped."""
        from PIL import Image

        try:
            with Image.open(path) as image:
                return np.asarray(image.convert("RGB"))
        except self._errors as exc:
            if not self.skip_unreadable:
                raise CommandError(
                    f"Cannot read image {path}: {exc}. Remove it, or pass "
                    "--skip-unreadable to skip unreadable images."
                ) from exc
            self.skipped.append((Path(path), str(exc)))
            return None

    def batches(self, paths, batch_size, progress):
        """Yield lists of (path, image) of at most `batch_size` readable images.

        `progress` is updated with the number of files done after each batch
        has been used, and closed at the end.
        """
        for start in range(0, len(paths), batch_size):
            pairs = [
                (path, self.read(path)) for path in paths[start : start + batch_size]
            ]
            pairs = [(path, image) for path, image in pairs if image is not None]
            if pairs:
                yield pairs
            progress.update(min(start + batch_size, len(paths)))
        progress.close()

    def report(self, console):
        """Warn about the skipped files; return them as JSON-ready dicts."""
        for path, reason in self.skipped:
            console.warn(f"skipped unreadable image {path}: {reason}")
        return [{"path": str(path), "error": reason} for path, reason in self.skipped]
