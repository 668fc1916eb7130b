"""CSE in the command line: ``fit --embedder cse`` and the ``cse`` and
``cse_kmeans`` methods of ``crdistance evaluate``.

The embedder (:class:`~crdistance.featurizer.ContrastiveEmbedder`) learns from
the patch features of the good training images and of one defective copy of
each (:func:`~crdistance.model_selection.defect_training_set`: synthetic
defects made in image space, seeded), all held in memory; the detector is
then fitted on the embedding of the good images.
"""

from crdistance.cli._io import CommandError

KMEANS_CLUSTERS = 32
"""Centres of the KMeansDetector of ``fit --detector kmeans`` and ``cse_kmeans``."""
SEED = 0
"""Seed of what the command line draws: k-means, CSE's defects and training."""


def make_embedder(console):
    """An unfitted ContrastiveEmbedder seeded with ``SEED``, showing its epochs
    unless the console is quiet."""
    from crdistance.featurizer import ContrastiveEmbedder

    return ContrastiveEmbedder(random_state=SEED, progress=not console.quiet)


def kmeans_detector():
    """An unfitted KMeansDetector of ``KMEANS_CLUSTERS`` centres (CSE's scorer)."""
    from crdistance.kmeans import KMeansDetector

    return KMeansDetector(n_clusters=KMEANS_CLUSTERS, random_state=SEED)


def cse_training_set(featurizer, paths, console):
    """Features of the good images `paths` and of a defective copy of each (a
    Bunch of :func:`~crdistance.model_selection.defect_training_set`)."""
    from crdistance.model_selection import defect_training_set

    if len(paths) < 2:
        raise CommandError(
            f"--embedder cse trains on at least 2 good images (a defect may take "
            f"its texture from another image); got {len(paths)} outside the "
            "held-out ones. Add images or lower --calibration."
        )
    console.info(f"cse: features of {len(paths)} good images and of a defective "
                 "copy of each")
    return defect_training_set([str(path) for path in paths], featurizer,
                               random_state=SEED)


def fit_embedding(embedder, featurizer, paths, reader, console):
    """Train `embedder` on the readable `paths` and their defective copies.

    Returns
    -------
    embedding : ndarray of shape (n_readable, h, w, n_components)
        The embedded features of the good images, for the detector's fit.
    record : dict
        :func:`embedder_record` of the trained embedder, JSON-ready.
    """
    progress = console.progress("cse: reading images", len(paths))
    readable = [path for pairs in reader.batches(paths, featurizer.batch_size,
                                                 progress) for path, _ in pairs]
    training = cse_training_set(featurizer, readable, console)
    embedder.fit(training.normal, defective=training.defective,
                 defect_shares=training.shares)
    record = embedder_record(embedder, len(training.normal), len(training.defective))
    return embedder.transform(training.normal), record


def embedder_record(embedder, n_images, n_copies):
    """What a fitted ContrastiveEmbedder learnt from and how its training went.

    The losses are those of the last epoch (``validation_loss`` None without
    validation); the curves hold every epoch's, and the weights kept are those
    of ``best_epoch``.
    """
    def last(curve):
        return float(curve[-1]) if len(curve) else None

    return {
        "class": type(embedder).__name__,
        "n_features_in": int(embedder.n_features_in_),
        "n_components": int(embedder.n_features_out_),
        "random_state": SEED,
        "n_training_images": int(n_images),
        "n_defective_images": int(n_copies),
        "n_defective_patches": int(embedder.n_defective_patches_),
        "n_iter": int(embedder.n_iter_),
        "best_epoch": int(embedder.best_epoch_),
        "loss": last(embedder.loss_curve_),
        "validation_loss": last(embedder.validation_loss_curve_),
        **{f"{term}_loss": last(getattr(embedder, f"{term}_loss_curve_"))
           for term in ("pull", "push", "reconstruction")},
        "loss_curve": [float(value) for value in embedder.loss_curve_],
        "validation_loss_curve": [float(value)
                                  for value in embedder.validation_loss_curve_],
    }


class EmbeddedDetector:
    """A detector fitted and scoring on a ContrastiveEmbedder's embedding, with
    the ``fit`` and ``score_patches`` that ``crdistance evaluate`` calls.

    Parameters
    ----------
    embedder : ContrastiveEmbedder
        Unfitted; ``fit`` trains it on the features it is given and the
        defective features of `training`.
    detector : estimator
        Unfitted detector with ``fit`` and ``score_patches``.
    training : Bunch
        :func:`cse_training_set` of the training images, whose ``defective``
        and ``shares`` the embedder learns from.
    """

    def __init__(self, embedder, detector, training):
        self.embedder, self.detector, self.training = embedder, detector, training

    def fit(self, X):
        self.embedder.fit(X, defective=self.training.defective,
                          defect_shares=self.training.shares)
        self.detector.fit(self.embedder.transform(X))
        return self

    def score_patches(self, X):
        return self.detector.score_patches(self.embedder.transform(X))

    def state_parts(self):
        """The fitted estimators whose arrays make up the state."""
        return self.embedder, self.detector
