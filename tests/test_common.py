"""scikit-learn's estimator checks over every public estimator."""

import pytest
from sklearn.utils.estimator_checks import parametrize_with_checks

from crdistance import CRDetector

_AUTO_FLAGS_NO_TRAINING_SAMPLE = (
    "contamination='auto' is the 99 % point of a Gaussian reference model; no "
    "training sample of make_blobs exceeds it. Tested with contamination=0.1."
)

EXPECTED_FAILED_CHECKS = {
    "CRDetector()": {
        # The d x d state follows the input's namespace and device instead of
        # raising: a model fitted on a GPU must score on a CPU-only edge device.
        "check_array_api_same_namespace": (
            "by design the fitted state moves to the input's namespace and device"
        ),
        "check_outliers_fit_predict": _AUTO_FLAGS_NO_TRAINING_SAMPLE,
        "check_outliers_train": _AUTO_FLAGS_NO_TRAINING_SAMPLE,
    },
    "CRDetector(contamination=0.1)": {
        "check_array_api_same_namespace": (
            "by design the fitted state moves to the input's namespace and device"
        ),
    },
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
    [CRDetector(), CRDetector(contamination=0.1)],
    expected_failed_checks=lambda est: EXPECTED_FAILED_CHECKS.get(repr(est), {}),
)
def test_sklearn_compatible_estimator(estimator, check):
    if _needs_missing_cuda(check):
        pytest.skip("no CUDA device")
    check(estimator)
