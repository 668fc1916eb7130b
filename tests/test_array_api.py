"""Namespaces and devices: NumPy, torch, CuPy, array-api-strict; persistence."""

import subprocess
import sys

import joblib
import numpy as np
import pytest
from numpy.testing import assert_allclose

from crdistance import CRDetector, LocalCRDetector
from crdistance._array_api import namespace_and_device, to_numpy


def _namespaces():
    """(name, converter) for every library available here; GPUs only when present."""
    yield pytest.param(np.asarray, id="numpy")
    try:
        import array_api_strict as xps

        yield pytest.param(xps.asarray, id="array_api_strict")
    except ImportError:
        pass
    try:
        import torch
    except ImportError:
        return
    yield pytest.param(torch.from_numpy, id="torch-cpu")
    cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device")
    yield pytest.param(
        lambda a: torch.from_numpy(a).to("cuda"), id="torch-cuda", marks=[cuda]
    )


def _cupy_asarray(a):
    cupy = pytest.importorskip("cupy")
    if cupy.cuda.runtime.getDeviceCount() == 0:
        pytest.skip("no CUDA device")
    return cupy.asarray(a)


CONVERTERS = [*_namespaces(), pytest.param(_cupy_asarray, id="cupy")]


@pytest.fixture
def data(rng):
    X = rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))
    return X, rng.normal(size=(20, 6))


@pytest.mark.parametrize("convert", CONVERTERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_results_stay_in_the_input_namespace_and_device(convert, dtype, data):
    X, Y = (a.astype(dtype) for a in data)
    reference = CRDetector(lam=0.5).fit(X)
    X_xp, Y_xp = convert(X), convert(Y)
    detector = CRDetector(lam=0.5).fit(X_xp)
    xp, device = namespace_and_device(X_xp)
    for method in ("score_samples", "decision_function", "score_patches", "predict"):
        result = getattr(detector, method)(Y_xp)
        result_xp, result_device = namespace_and_device(result)
        assert result_xp is xp and result_device == device, method
        expected = getattr(reference, method)(Y)
        assert to_numpy(result).dtype == expected.dtype, method
        assert_allclose(to_numpy(result), expected, rtol=1e-4 if dtype == np.float32
                        else 1e-10, err_msg=method)
    assert namespace_and_device(detector.gram_) == (xp, device)
    assert detector.offset_ == pytest.approx(reference.offset_, rel=1e-6)


def _local_detector():
    return LocalCRDetector(n_cells=3, n_nearest_cells=2, feature_groups=[2, 4],
                           random_state=0, chunk_size=17)


@pytest.mark.parametrize("convert", CONVERTERS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_local_detector_scores_in_the_input_namespace_and_device(convert, dtype,
                                                                 data):
    X, Y = (a.astype(dtype) for a in data)
    reference = _local_detector().fit(X)
    X_xp, Y_xp = convert(X), convert(Y)
    detector = _local_detector().fit(X_xp)
    xp, device = namespace_and_device(X_xp)
    rtol = 1e-5 if dtype == np.float32 else 1e-10
    for method in ("score_samples", "decision_function", "score_patches", "predict"):
        expected = getattr(reference, method)(Y)
        # Fitted on the input's library, and fitted on NumPy: the state moves.
        for fitted in (detector, reference):
            result = getattr(fitted, method)(Y_xp)
            assert namespace_and_device(result) == (xp, device), method
            assert to_numpy(result).dtype == expected.dtype, method
            assert_allclose(to_numpy(result), expected, rtol=rtol, err_msg=method)
    assert isinstance(detector.scoring_operators_[0], np.ndarray)
    assert detector.offset_ == pytest.approx(reference.offset_, rel=rtol)


@pytest.mark.parametrize("make_detector", [CRDetector, _local_detector],
                         ids=["CRDetector", "LocalCRDetector"])
@pytest.mark.parametrize("convert", CONVERTERS)
def test_patch_maps_keep_their_shape_in_every_namespace(convert, make_detector, rng):
    images = rng.normal(size=(4, 3, 5, 6)).astype(np.float32)
    detector = make_detector().fit(convert(images))
    maps = detector.score_patches(convert(images))
    assert tuple(maps.shape) == (4, 3, 5)
    assert tuple(detector.score_samples(convert(images)).shape) == (4,)


@pytest.mark.parametrize("make_detector", [CRDetector, _local_detector],
                         ids=["CRDetector", "LocalCRDetector"])
def test_torch_half_precision_is_scored_in_float32(make_detector, data):
    torch = pytest.importorskip("torch")
    X, Y = data
    detector = make_detector().fit(torch.from_numpy(X).to(torch.bfloat16))
    scores = detector.score_samples(torch.from_numpy(Y).to(torch.float16))
    assert scores.dtype == torch.float32


def test_torch_nan_is_rejected_in_its_own_namespace(data):
    torch = pytest.importorskip("torch")
    X, _ = data
    X = torch.from_numpy(X)
    X[3, 2] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        CRDetector().fit(X)


def test_state_follows_the_data_across_namespaces(data):
    torch = pytest.importorskip("torch")
    X, Y = data
    detector = CRDetector().fit(torch.from_numpy(X))
    assert_allclose(detector.score_samples(Y),
                    CRDetector().fit(X).score_samples(Y), rtol=1e-10)
    detector.partial_fit(X)
    assert isinstance(detector.gram_, np.ndarray)
    assert_allclose(detector.gram_, 2 * X.T @ X, rtol=1e-12)


def test_joblib_round_trip_gives_identical_scores(tmp_path, data):
    X, Y = data
    detector = CRDetector(lam=0.3, contamination=0.1).fit(X)
    joblib.dump(detector, tmp_path / "model.joblib")
    loaded = joblib.load(tmp_path / "model.joblib")
    np.testing.assert_array_equal(loaded.score_samples(Y), detector.score_samples(Y))
    np.testing.assert_array_equal(loaded.predict(Y), detector.predict(Y))


def test_torch_fitted_model_loads_and_scores_without_torch(tmp_path, data):
    torch = pytest.importorskip("torch")
    X, Y = data
    detector = CRDetector().fit(torch.from_numpy(X))
    joblib.dump(detector, tmp_path / "model.joblib")
    np.save(tmp_path / "queries.npy", Y)
    expected = detector.score_samples(torch.from_numpy(Y)).numpy()
    np.save(tmp_path / "expected.npy", expected)
    # torch and CuPy are made unimportable, as on an edge device without them.
    code = f"""
import sys

class Missing:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("torch", "cupy"):
            raise ModuleNotFoundError(name)

sys.meta_path.insert(0, Missing())
import joblib, numpy as np
model = joblib.load({str(tmp_path / "model.joblib")!r})
scores = model.score_samples(np.load({str(tmp_path / "queries.npy")!r}))
expected = np.load({str(tmp_path / "expected.npy")!r})
np.testing.assert_allclose(scores, expected, rtol=1e-12)
assert isinstance(model.gram_, np.ndarray)
assert "torch" not in sys.modules
"""
    subprocess.run([sys.executable, "-c", code], check=True)
