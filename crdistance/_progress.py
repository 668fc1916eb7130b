"""The one progress reporter: a bar redrawn in place on a terminal, a line in a log.

Used by :class:`~crdistance.featurizer.PatchFeaturizer` (``progress=True``) and
by every step of the ``crdistance`` command line. The progress of training loops
lives here too: :func:`show_progress` resolves an estimator's ``progress="auto"``
and :class:`EarlyStopping` keeps the best epoch of the trained models
(:class:`~crdistance.featurizer.ContrastiveEmbedder`,
:class:`~crdistance.grad.GRADDetector`).
"""

import sys
import time

__all__ = ["EarlyStopping", "Progress", "show_progress"]

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


def show_progress(progress, *, worth_it=True):
    """Whether an estimator's ``progress`` parameter (bool or ``"auto"``) shows
    a bar: ``"auto"`` shows one when stderr is a terminal and ``worth_it``."""
    if progress == "auto":
        return _isatty(sys.stderr) and worth_it
    return progress


class EarlyStopping:
    """The best epoch of a training loop so far, and when to stop it.

    ``update(value, epoch)`` records a monitored loss: a value lower than the
    best by more than ``tol`` becomes the best, with ``snapshot()`` (e.g. a
    copy of the weights); the call returns whether ``patience`` epochs in a
    row have not improved, when ``enabled``.

    Examples
    --------
    >>> stopper = EarlyStopping(tol=0.0, patience=2, enabled=True,
    ...                         snapshot=lambda: "weights")
    >>> [stopper.update(value, epoch) for epoch, value in enumerate([3, 2, 2, 5], 1)]
    [False, False, False, True]
    >>> stopper.best_epoch, stopper.best_value
    (2, 2)
    """

    def __init__(self, *, tol, patience, enabled, snapshot):
        self.tol, self.patience, self.enabled = tol, patience, enabled
        self.snapshot = snapshot
        self.best_value, self.best_epoch, self.best_state = float("inf"), 0, snapshot()
        self.stale = 0

    def update(self, value, epoch):
        """Record epoch ``epoch``'s monitored ``value``; return whether to stop."""
        if value < self.best_value - self.tol:
            self.best_value, self.best_epoch = value, epoch
            self.best_state, self.stale = self.snapshot(), 0
        else:
            self.stale += 1
        return self.enabled and self.stale >= self.patience


def _isatty(stream):
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())
