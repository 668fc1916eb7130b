"""
Fitting on Dask workers: patches never leave the workers
========================================================

Each worker featurizes its share of the training images and fits a detector on
them; only the fitted d x d Gram matrices travel to the client, where
:func:`crdistance.merge` sums them into the detector of all the images. The
result equals a single in-memory fit. Here the "cluster" is two local worker
processes; point ``Client`` at a real scheduler to use more machines.

Run with an MVTec-layout folder as argument (default: ``../shared/data/magnetic_tile``).
"""

# %%
import os
import sys
from pathlib import Path

import numpy as np
from distributed import Client, LocalCluster

from crdistance import CRDetector, merge
from crdistance.datasets import load_mvtec
from crdistance.featurizer import PatchFeaturizer

SHARED = Path(__file__).resolve().parents[2] / "shared"
DATA = Path(sys.argv[1]) if len(sys.argv) > 1 else SHARED / "data" / "magnetic_tile"
os.environ.setdefault("TORCH_HOME", str(SHARED / "weights"))  # workers inherit it
N_IMAGES, N_PARTITIONS = 24, 4


def fit_partition(paths):
    """On a worker: images -> patch features -> a detector holding their Gram."""
    features = PatchFeaturizer(backbone="mobilenet_v2").fit_transform(paths)
    return CRDetector(lam=0.01, lam_scale="trace").fit(features)


paths = load_mvtec(DATA, "train").paths[:N_IMAGES]
if __name__ == "__main__":
    with (
        LocalCluster(
            n_workers=2, threads_per_worker=1, dashboard_address=None
        ) as cluster,
        Client(cluster) as client,
    ):
        partial_detectors = client.gather(
            client.map(fit_partition, np.array_split(paths, N_PARTITIONS))
        )
    detector = merge(partial_detectors)
    reference = fit_partition(paths)
    difference = (
        np.max(np.abs(detector.gram_ - reference.gram_)) / np.max(reference.gram_)
    )
    d = detector.n_features_in_
    print(f"{N_IMAGES} images on {N_PARTITIONS} partitions: "
          f"{detector.n_samples_seen_:,} patches of d = {d}")
    patch_mib = reference.n_samples_seen_ * d * 4 / N_PARTITIONS / 2**20
    print(f"sent to the client per partition: {d * d * 8 / 2**20:.2f} MiB of Gram "
          f"(the patches would be {patch_mib:.1f} MiB)")
    # Not 1e-16: the workers' backbone ran with other thread counts, so their
    # float32 features differ in the last bits; the merge itself is exact
    # (tests/test_distributed.py checks it on identical features).
    print(f"merged vs in-memory Gram, max relative difference: {difference:.1e}")
