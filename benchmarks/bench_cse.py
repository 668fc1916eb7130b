"""CSE (a contrastively trained embedding) against raw features on the real image sets.

For each MVTec-layout set under ``../shared/data`` (default magnetic_tile,
screw, tire), on one set of patch features per set (default MobileNetV2,
ImageNet weights, the featurizer's default layers, cached as in the other
image benchmarks), one run fits and scores:

- ``crd``: ``CRDetector(lam=0.01, lam_scale="trace")`` on the raw features;
- ``local_crd``: ``LocalCRDetector(n_cells=16)``, one group per layer;
- ``coreset_1pct``: 1-NN over a 1 % greedy k-center coreset (PatchCore);
- ``cse_kmeans``: CSE, the paper's system: a
  :class:`~crdistance.featurizer.ContrastiveEmbedder` trained on the training
  images and one synthetic defective copy of each
  (:func:`~crdistance.model_selection.synthesize_defects`, default settings),
  scored by :class:`~crdistance.kmeans.KMeansDetector` (32 centres);
- ``cse_crd``, ``cse_local_crd``, ``coreset_1pct_on_cse``: the same embedding
  scored by the ``crd`` detector, by ``LocalCRDetector(n_cells=16)`` and by the
  1 % coreset.

The CSE rows share one trained embedder per set. Their ``fit_s`` is the
backbone pass over the defective copies, the training and the detector's fit
(the backbone pass over the normal training images, common to all rows, is
excluded everywhere); their ``distance_ms_per_image`` is the embedding plus the
scoring, and ``deployable_bytes`` the embedder's float32 weights plus the
detector's. No test label is read before scoring. Columns follow
``../shared/RESULTS.md``, with the embedder's ``n_iter`` and ``best_epoch`` and
the embedding statistics (mean cosine similarity of test patches to the mean
normal training direction, normal and inside real defects) after them. The
training curves are plotted to ``OUT_DIR/bench_cse_loss.png``.

Example::

    python benchmarks/bench_cse.py                        # the full run (~20 min)
    python benchmarks/bench_cse.py --datasets screw
    python benchmarks/bench_cse.py --quick                # a smoke test
"""

import argparse
import os
import time
from datetime import UTC, datetime

import numpy as np
from _features import (
    SHARED,
    add_feature_arguments,
    featurizer_for,
    load_set,
    log,
    run_header,
    state_bytes,
    use_shared_weights,
)
from bench_accuracy import evaluate, write_csv

from crdistance import CRDetector, LocalCRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.kmeans import KMeansDetector
from crdistance.model_selection import patch_masks, read_image, synthesize_defects


class Embedded:
    """A detector on the output of a fitted embedder: ``score_patches`` of raw
    features (the embedding is timed with the scoring)."""

    def __init__(self, embedder, detector):
        self.embedder, self.detector = embedder, detector

    def fit(self, X):
        self.detector.fit(self.embedder.transform(X))
        return self

    def score_patches(self, X):
        return self.detector.score_patches(self.embedder.transform(X))

    def deployable_bytes(self):
        embedder = self.embedder
        weights = [*embedder.coefs_, *embedder.intercepts_, embedder.mean_,
                   embedder.scale_]
        return 4 * sum(w.size for w in weights) + state_bytes(self.detector)[1]


def raw_methods(args, layer_channels):
    return {
        "crd": CRDetector(lam=0.01, lam_scale="trace"),
        "local_crd": LocalCRDetector(n_cells=16, feature_groups=list(layer_channels),
                                     random_state=args.seed),
        "coreset_1pct": NearestNeighborDetector(
            coreset_ratio=0.01, contamination=None, random_state=args.seed),
    }


def cse_methods(args):
    return {
        "cse_kmeans": KMeansDetector(n_clusters=32, random_state=args.seed),
        "cse_crd": CRDetector(lam=0.01, lam_scale="trace"),
        "cse_local_crd": LocalCRDetector(n_cells=16, random_state=args.seed),
        "coreset_1pct_on_cse": NearestNeighborDetector(
            coreset_ratio=0.01, contamination=None, random_state=args.seed),
    }


def train_embedder(args, train_paths, train, featurizer):
    """The CSE embedder of one set, and the seconds its training data and
    training took (the backbone over the defective copies included)."""
    from crdistance.featurizer import ContrastiveEmbedder

    start = time.perf_counter()
    images = [read_image(path) for path in train_paths]
    defective, masks = synthesize_defects(images, random_state=args.seed)
    defective = featurizer.transform(defective)
    shares = patch_masks(masks, defective.shape[1:3], resize=featurizer.resize,
                         crop_size=featurizer.crop_size)
    data_s = time.perf_counter() - start
    embedder = ContrastiveEmbedder(random_state=args.seed, max_epochs=args.max_epochs,
                                   progress=True)
    start = time.perf_counter()
    embedder.fit(train, defective=defective, defect_shares=shares)
    train_s = time.perf_counter() - start
    log(f"CSE: defective copies {defective.shape} in {data_s:.1f} s, training "
        f"{embedder.n_iter_} epochs (best {embedder.best_epoch_}) in {train_s:.1f} s, "
        f"{embedder.n_defective_patches_} defective patches")
    return embedder, data_s + train_s


def embedding_statistics(embedder, train, test, labels, masks):
    """Mean cosine similarity to the mean normal training direction: of
    normal test patches, and of test patches inside real defects."""
    center = embedder.transform(train).reshape(-1, embedder.n_components).mean(axis=0)
    center /= np.linalg.norm(center)
    similarity = embedder.transform(test) @ center
    stats = {"cos_normal_test": float(similarity[labels == 0].mean())}
    if masks is not None:
        grid = test.shape[1:3]
        shares = patch_masks([m.astype(bool) for m in masks], grid)
        inside = shares[labels == 1] >= 0.5
        stats["cos_defect_test"] = float(similarity[labels == 1][inside].mean())
    else:
        stats["cos_defective_images_test"] = float(similarity[labels == 1].mean())
    return stats


def run_dataset(args, dataset):
    """Every method on one set; its rows and the embedder (for the curves)."""
    train_paths, data = load_set(args, dataset)
    train, test, labels, masks = data
    featurizer = featurizer_for(args, train_paths)
    rows = [evaluate(dataset, label, detector, data, args.repeats)
            for label, detector in raw_methods(args,
                                               featurizer.layer_channels_).items()]
    embedder, embedder_s = train_embedder(args, list(train_paths), train, featurizer)
    stats = embedding_statistics(embedder, train, test, labels, masks)
    log(f"{dataset}: embedding statistics {stats}")
    for label, detector in cse_methods(args).items():
        row = evaluate(dataset, label, Embedded(embedder, detector), data, args.repeats)
        row["fit_s"] += embedder_s
        row.update(n_iter=embedder.n_iter_, best_epoch=embedder.best_epoch_, **stats)
        rows.append(row)
    return rows, embedder


def plot_curves(embedders, path):
    """Training and validation loss of each set's embedder, and its terms."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(1, len(embedders), figsize=(4.5 * len(embedders), 3.4),
                                squeeze=False)
    for axis, (dataset, embedder) in zip(axes[0], embedders.items(), strict=True):
        epochs = np.arange(1, embedder.n_iter_ + 1)
        axis.plot(epochs, embedder.loss_curve_, label="training loss", color="k")
        if embedder.validation_loss_curve_:
            axis.plot(epochs, embedder.validation_loss_curve_, label="validation loss",
                      color="k", linestyle="--")
        for term, color in (("pull", "tab:blue"), ("push", "tab:red"),
                            ("reconstruction", "tab:green")):
            axis.plot(epochs, getattr(embedder, f"{term}_loss_curve_"), label=term,
                      color=color, linewidth=1)
        axis.axvline(embedder.best_epoch_, color="grey", linewidth=0.8)
        axis.set_title(dataset)
        axis.set_xlabel("epoch")
        axis.set_yscale("log")
    axes[0][0].set_ylabel("loss")
    axes[0][0].legend(fontsize=7)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_feature_arguments(parser)
    parser.add_argument("--datasets", nargs="+",
                        default=["magnetic_tile", "screw", "tire"])
    parser.add_argument("--data-root", type=type(SHARED), default=None,
                        help="folder holding the sets (default: ../shared/data)")
    parser.add_argument("--max-train-images", type=int, default=None)
    parser.add_argument("--max-test-images", type=int, default=None)
    parser.add_argument("--max-epochs", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--quick", action="store_true",
                        help="24 training and 16 test images of each set, 2 epochs")
    args = parser.parse_args(argv)
    if args.quick:
        args.max_train_images, args.max_test_images = 24, 16
        args.max_epochs = 2
    return args


def main(argv=None):
    args = parse_args(argv)
    use_shared_weights()
    started = datetime.now(UTC)
    load_before = os.getloadavg()[0]
    rows, embedders = [], {}
    for dataset in args.datasets:
        dataset_rows, embedders[dataset] = run_dataset(args, dataset)
        rows += dataset_rows
    header = run_header("bench_cse.py", args, started, load_before)
    suffix = "_quick" if args.quick else ""
    write_csv(rows, args.out_dir / f"bench_cse{suffix}.csv", header)
    plot_curves(embedders, args.out_dir / f"bench_cse{suffix}_loss.png")
    for row in rows:
        print(",".join(str(row.get(column, "")) for column in
                       ("dataset", "method", "image_auroc", "pixel_auroc")))
    print(f"\nwrote {args.out_dir / f'bench_cse{suffix}.csv'}")


if __name__ == "__main__":
    main()
