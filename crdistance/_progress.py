"""The one progress reporter: a bar redrawn in place on a terminal, a line in a log.

Used by :class:`~crdistance.featurizer.PatchFeaturizer` (``progress=True``) and
by every step of the ``crdistance`` command line.
"""

import sys
import time

__all__ = ["Progress"]

BAR_WIDTH = 30


class Progress:
    """Progress of one step of ``total`` items, written to ``stream``.

    On a terminal the bar is redrawn in place after each :meth:`update`;
    elsewhere (a log file, a pipe) only the closing line is written, so logs
    hold one line per step. Nothing is written when ``enabled`` is false.

    Parameters
    ----------
    label : str
        Name of the step, at the start of the line.
    total : int
        Number of items the step handles.
    unit : str, default="images"
        What the items are.
    stream : file or None, default=None
        Where to write; None is ``sys.stderr`` at the time of the call.
    enabled : bool, default=True
        Whether to write anything.

    Examples
    --------
    >>> import io
    >>> stream = io.StringIO()
    >>> progress = Progress("fit", 4, stream=stream)
    >>> progress.update(4)
    >>> _ = progress.close()
    >>> stream.getvalue().startswith("fit: 4/4 images in ")
    True
    """

    def __init__(self, label, total, *, unit="images", stream=None, enabled=True):
        self.label, self.total, self.unit = label, total, unit
        self.stream = sys.stderr if stream is None else stream
        self.enabled = enabled
        self.live = enabled and _isatty(self.stream)
        self.done = 0
        self.start = time.perf_counter()

    def update(self, done):
        """Record that ``done`` items are finished; redraw the bar on a terminal."""
        self.done = done
        if self.live:
            filled = round(BAR_WIDTH * done / max(self.total, 1))
            bar = "#" * filled + "." * (BAR_WIDTH - filled)
            self.stream.write(
                f"\r{self.label}: [{bar}] {done}/{self.total} {self.unit} "
                f"{time.perf_counter() - self.start:.0f} s"
            )
            self.stream.flush()

    def close(self):
        """Write the closing line, with the time taken; return the seconds."""
        seconds = time.perf_counter() - self.start
        if self.live:
            self.stream.write("\r\033[K")
        if self.enabled:
            line = f"{self.label}: {self.done}/{self.total} {self.unit}"
            print(f"{line} in {seconds:.1f} s", file=self.stream, flush=True)
        return seconds


def _isatty(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
