"""scikit-learn's estimator checks over every public estimator."""

import pytest
from sklearn.kernel_approximation import RBFSampler
from sklearn.utils.estimator_checks import parametrize_with_checks

from crdistance import CRDetector, CRDetectorCV, LocalCRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.kmeans import KMeansDetector
from crdistance.preprocessing import PatchTransformer

# The d x d state follows the input's namespace and device instead of raising:
# a model fitted on a GPU must score on a CPU-only edge device.
SAME_NAMESPACE = "by design the fitted state moves to the input's namespace and device"
AUTO_FLAGS_NO_TRAINING_SAMPLE = (
    "contamination='auto' is the 99 % point of a Gaussian reference model; no "
    "training sample of make_blobs exceeds it. Tested with contamination=0.1."
)
TRAINING_ROWS_IN_BANK = (
    "training rows are in the memory bank at distance 0, so predict on the training "
    "set finds fewer outliers than contamination; the threshold is calibrated on "
    "held-out distances, as needed for new data"
)

MAX_FLAGS_NO_TRAINING_SAMPLE = (
    "contamination='max' puts the threshold at the largest training distance: by "
    "design no training sample is an outlier. Tested with contamination=0.1."
)

try:  # torch-backed estimators, when torch is installed
    from crdistance.featurizer import ContrastiveEmbedder

    TORCH_ESTIMATORS = [
        (ContrastiveEmbedder(n_components=3, hidden_size=8, max_epochs=3,
                             random_state=0, progress=False), {}),
    ]
except ImportError:
    TORCH_ESTIMATORS = []

ESTIMATORS_AND_EXPECTED_FAILURES = [
    (CRDetector(), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
        "check_outliers_fit_predict": AUTO_FLAGS_NO_TRAINING_SAMPLE,
        "check_outliers_train": AUTO_FLAGS_NO_TRAINING_SAMPLE,
    }),
    (CRDetector(contamination=0.1), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
    }),
    (LocalCRDetector(n_cells=2, random_state=0), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
    }),
    (LocalCRDetector(n_cells=2, cell_weights=None, random_state=0), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
    }),
    (PatchTransformer(RBFSampler(n_components=20, random_state=0), random_state=0),
     {}),
    (CRDetectorCV(), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
        "check_outliers_fit_predict": AUTO_FLAGS_NO_TRAINING_SAMPLE,
        "check_outliers_train": AUTO_FLAGS_NO_TRAINING_SAMPLE,
    }),
    (CRDetectorCV(contamination=0.1), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
    }),
    *[
        (estimator, {
            "check_array_api_same_namespace": SAME_NAMESPACE,
            "check_outliers_train": TRAINING_ROWS_IN_BANK,
            "check_outliers_fit_predict": TRAINING_ROWS_IN_BANK,
        })
        for estimator in (
            NearestNeighborDetector(),
            NearestNeighborDetector(
                n_neighbors=3, coreset_ratio=0.5, contamination=0.1, random_state=0
            ),
        )
    ],
    (KMeansDetector(n_clusters=4, random_state=0), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
        "check_outliers_train": MAX_FLAGS_NO_TRAINING_SAMPLE,
        "check_outliers_fit_predict": MAX_FLAGS_NO_TRAINING_SAMPLE,
    }),
    (KMeansDetector(n_clusters=4, contamination=0.1, random_state=0), {
        "check_array_api_same_namespace": SAME_NAMESPACE,
    }),
    *TORCH_ESTIMATORS,
]
EXPECTED_FAILED_CHECKS = {
    repr(estimator): failures
    for estimator, failures in ESTIMATORS_AND_EXPECTED_FAILURES
}


def _needs_missing_cuda(check):
    """scikit-learn only asks whether torch was built with CUDA, not whether a
    device is present; a CUDA build on a machine without a GPU must skip."""
    devices = [str(value) for value in getattr(check, "keywords", {}).values()]
    if not any("cuda" in device for device in devices):
        return False
    torch = pytest.importorskip("torch")
    return not torch.cuda.is_available()


@parametrize_with_checks(
    [estimator for estimator, _ in ESTIMATORS_AND_EXPECTED_FAILURES],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS[repr(est)],
)
@pytest.mark.filterwarnings("ignore:y is ignored:UserWarning")  # CRDetectorCV
def test_sklearn_compatible_estimator(estimator, check):
    if _needs_missing_cuda(check):
        pytest.skip("no CUDA device")
    check(estimator)
