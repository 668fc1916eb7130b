"""Safe model files: round trips, and tampered, truncated or hostile files refused."""

import io
import json
import os
import pickle
import struct
import zipfile

import joblib
import numpy as np
import pytest
from _model_files import assert_refused, replace_array, rewrite
from numpy.testing import assert_array_equal
from sklearn.base import clone
from sklearn.decomposition import PCA
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector, persistence
from crdistance.baselines import NearestNeighborDetector
from crdistance.persistence import load, save

FITTED = ("gram_", "residual_operator_", "lam_", "offset_", "solver_",
          "n_samples_seen_", "patches_per_sample_", "n_features_in_")


@pytest.fixture
def X(rng):
    return rng.normal(size=(200, 6)) @ rng.normal(size=(6, 6))


@pytest.fixture
def model_path(tmp_path, X):
    path = tmp_path / "model.npz"
    save(CRDetector(lam=0.5, contamination=0.1).fit(X), path)
    return path


def assert_same_detector(loaded, detector):
    assert type(loaded) is CRDetector
    assert loaded.get_params() == detector.get_params()
    for name in FITTED:
        assert_array_equal(getattr(loaded, name), getattr(detector, name))


@pytest.mark.parametrize("params", [
    {}, {"contamination": 0.1}, {"contamination": "max"},
    {"lam": 0.1, "lam_scale": "trace", "chunk_size": 7, "compute_dtype": "float32"},
])
def test_detector_round_trip_scores_identically(tmp_path, X, rng, params):
    detector = CRDetector(**params).fit(X)
    save(detector, tmp_path / "model.npz")
    loaded = load(tmp_path / "model.npz")
    assert_same_detector(loaded, detector)
    queries = rng.normal(size=(50, 6))
    assert_array_equal(loaded.score_samples(queries), detector.score_samples(queries))
    assert_array_equal(loaded.predict(queries), detector.predict(queries))


def test_patch_set_detector_round_trip(tmp_path, rng):
    detector = CRDetector(lam=1.0).fit(rng.normal(size=(20, 4, 4, 8)))
    save(detector, tmp_path / "patches.npz")
    loaded = load(tmp_path / "patches.npz")
    assert loaded.patches_per_sample_ == 16
    queries = rng.normal(size=(3, 4, 4, 8))
    assert_array_equal(loaded.score_patches(queries), detector.score_patches(queries))
    assert_array_equal(loaded.decision_function(queries),
                       detector.decision_function(queries))


def test_feature_names_kept_and_partial_fit_resumes(tmp_path, X):
    pd = pytest.importorskip("pandas")
    frame = pd.DataFrame(X, columns=[f"f{i}" for i in range(6)])
    detector = CRDetector().fit(frame[:100])
    save(detector, tmp_path / "model.npz")
    loaded = load(tmp_path / "model.npz")
    assert_array_equal(loaded.feature_names_in_, detector.feature_names_in_)
    assert_same_detector(loaded.partial_fit(frame[100:]),
                         detector.partial_fit(frame[100:]))
    with pytest.raises(ValueError, match="feature names"):
        loaded.score_samples(frame.rename(columns={"f0": "other"}))


def test_torch_fitted_detector_saves_as_numpy(tmp_path, X):
    torch = pytest.importorskip("torch")
    detector = CRDetector().fit(torch.asarray(X))
    save(detector, tmp_path / "model.npz")
    loaded = load(tmp_path / "model.npz")
    assert isinstance(loaded.residual_operator_, np.ndarray)
    assert_array_equal(loaded.score_samples(X), detector.score_samples(X))


@pytest.mark.parametrize("with_mean, with_std", [(True, True), (False, True),
                                                 (True, False)])
def test_scaler_pipeline_round_trip(tmp_path, X, rng, with_mean, with_std):
    model = make_pipeline(StandardScaler(with_mean=with_mean, with_std=with_std),
                          CRDetector(lam=1.0)).fit(X)
    save(model, tmp_path / "pipeline.npz")
    loaded = load(tmp_path / "pipeline.npz")
    assert [name for name, _ in loaded.steps] == ["standardscaler", "crdetector"]
    assert loaded[0].get_params() == model[0].get_params()
    queries = rng.normal(size=(20, 6))
    assert_array_equal(loaded.score_samples(queries), model.score_samples(queries))


def test_featurizer_pipeline_round_trip(tmp_path, rng):
    pytest.importorskip("torchvision")
    from crdistance.featurizer import PatchFeaturizer

    images = rng.integers(0, 256, size=(4, 64, 64, 3), dtype=np.uint8)
    featurizer = PatchFeaturizer(backbone="resnet18", weights=None, resize=(64, 64),
                                 progress=False)
    model = make_pipeline(featurizer, CRDetector(lam=1.0)).fit(images)
    save(model, tmp_path / "pipeline.npz")
    loaded = load(tmp_path / "pipeline.npz")
    assert loaded[0].get_params() == featurizer.get_params()
    assert loaded[0].layers_ == featurizer.layers_
    assert loaded[0].layer_channels_ == featurizer.layer_channels_ == (128, 256)
    assert_array_equal(loaded.score_samples(images), model.score_samples(images))
    path = tmp_path / "pipeline.npz"
    for channels in ([128], [128, 255], [128.0, 256]):
        save(model, path)

        def edit(header, arrays, channels=channels):
            header["steps"][0]["fitted"]["layer_channels_"] = channels

        assert_refused(path, edit, "layer_channels_=.* must be one int >= 1 per layer")


def test_same_model_gives_same_bytes(tmp_path, X):
    detector = CRDetector().fit(X)
    save(detector, tmp_path / "a.npz")
    save(detector, tmp_path / "b.npz")
    assert (tmp_path / "a.npz").read_bytes() == (tmp_path / "b.npz").read_bytes()
    assert sorted(os.listdir(tmp_path)) == ["a.npz", "b.npz"]  # no temporary left


def test_file_is_an_npz_readable_without_pickle(model_path):
    with np.load(model_path, allow_pickle=False) as archive:
        assert sorted(archive.files) == [
            "crdetector.gram_", "crdetector.residual_operator_", "header.json"]
        assert json.loads(archive["header.json"])["format_version"] == 1


def test_joblib_still_works(tmp_path, X):
    detector = CRDetector().fit(X)
    joblib.dump(detector, tmp_path / "model.joblib")
    assert_same_detector(joblib.load(tmp_path / "model.joblib"), detector)


@pytest.mark.parametrize("model, error", [
    (NearestNeighborDetector(), TypeError),
    (make_pipeline(PCA(), CRDetector()), TypeError),
    (make_pipeline(StandardScaler()), ValueError),
    (CRDetector(), NotFittedError),
], ids=["other-detector", "other-step", "no-detector", "not-fitted"])
def test_save_refuses_what_it_cannot_store(tmp_path, X, model, error):
    if error is not NotFittedError:
        model = clone(model).fit(X)
    with pytest.raises(error):
        save(model, tmp_path / "model.npz")
    assert not (tmp_path / "model.npz").exists()


# Tampering: ``rewrite`` (tests/_model_files.py) rebuilds an archive from
# edited parts.


def test_rewrite_without_edit_loads(model_path):
    rewrite(model_path)
    assert load(model_path).n_features_in_ == 6


def test_flipped_byte_in_array_is_refused(model_path):
    raw = bytearray(model_path.read_bytes())
    gram = load(model_path).gram_
    raw[raw.find(gram.tobytes()) + 3] ^= 0xFF
    model_path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="not an intact zip.*Bad CRC-32"):
        load(model_path)


def edit_array(header, arrays):
    arrays["crdetector.gram_"] = arrays["crdetector.gram_"] * (1 + 1e-12)


def edit_offset(header, arrays):
    header["steps"][0]["fitted"]["offset_"] = -1e9


@pytest.mark.parametrize("edit", [edit_array, edit_offset])
def test_edits_without_new_checksum_are_refused(model_path, edit):
    rewrite(model_path, edit, resign=False)
    with pytest.raises(ValueError, match="SHA-256 checksum does not match"):
        load(model_path)


def test_truncated_file_is_refused(model_path):
    raw = model_path.read_bytes()
    for length in (0, 10, len(raw) // 2, len(raw) - 1):
        model_path.write_bytes(raw[:length])
        with pytest.raises(ValueError, match="truncated"):
            load(model_path)


def detector_fitted(**changes):
    def edit(header, arrays):
        header["steps"][0]["fitted"].update(changes)
    return edit


def detector_params(**changes):
    def edit(header, arrays):
        header["steps"][0]["params"].update(changes)
    return edit


def array(name, change):
    def edit(header, arrays):
        arrays[f"crdetector.{name}"] = change(arrays[f"crdetector.{name}"].copy())
    return edit


def set_entry(index, value):
    def change(matrix):
        matrix[index] = value
        return matrix
    return change


@pytest.mark.parametrize("edit, match", [
    (lambda h, a: h.update(format_version=2), "format version 2 is not supported"),
    (lambda h, a: h.update(format="other"), "does not declare format"),
    (lambda h, a: h.update(extra=1), r"unknown fields \['extra'\]"),
    (detector_fitted(n_features_in_=4), r"shape \(6, 6\), but n_features_in_ gives"),
    (detector_fitted(n_features_in_=6.0), "n_features_in_ must be an int"),
    (detector_fitted(n_samples_seen_=0), "n_samples_seen_ must be an int >= 1"),
    (detector_fitted(offset_=3.0), "offset_=3.0 is positive"),
    (detector_fitted(offset_="-1"), "offset_ must be a finite number"),
    (detector_fitted(lam_=0.25), "lam_=0.25 is not the penalty"),
    (detector_fitted(solver_="lu"), "solver_='lu' is unknown"),
    (detector_fitted(feature_names_in_=["a"]), "not a list of 6 str"),
    (detector_params(lam=-1.0), "'lam' parameter of CRDetector must be"),
    (detector_params(backdoor=1), r"unknown fields \['backdoor'\]"),
    (lambda h, a: h["steps"][0].update({"class": "os.system"}),
     r"steps \['os.system'\]"),
    (lambda h, a: h.update(model="Other"), "model 'Other' with steps"),
    (array("gram_", set_entry((0, 1), 1e3)), "gram_ is not symmetric"),
    (array("gram_", set_entry((2, 2), -1.0)), "gram_ has a negative diagonal"),
    (array("gram_", set_entry((1, 1), np.nan)), "holds NaN or infinity"),
    (array("residual_operator_", set_entry((0, 0), 2.0)), r"outside \[0, 1\]"),
    (array("residual_operator_", lambda m: m[:5, :5]), r"shape \(5, 5\)"),
])
def test_invalid_fields_are_refused_behind_a_valid_checksum(model_path, edit, match):
    assert_refused(model_path, edit, match)


def narrow_scaler(header, arrays):
    header["steps"][0]["fitted"]["n_features_in_"] = 5
    for name in ("mean_", "var_", "scale_"):
        key = f"standardscaler.{name}"
        replace_array(header, arrays, key, arrays[key][:5])


@pytest.mark.parametrize("edit, match", [
    (lambda h, a: h["steps"][0].update({"class": "Unpickler"}),
     "step 'standardscaler' has class 'Unpickler'"),
    (lambda h, a: h["steps"][1].update(name="standardscaler"), "two steps are named"),
    (lambda h, a: h["steps"][0].update(name="a__b"), "without '__'"),
    (lambda h, a: a.update({"standardscaler.scale_": -a["standardscaler.scale_"]}),
     "scale_ <= 0"),
    (narrow_scaler, "'crdetector' takes 6 features but step 'standardscaler' gives 5"),
])
def test_invalid_pipelines_are_refused(tmp_path, X, edit, match):
    path = tmp_path / "pipeline.npz"
    save(make_pipeline(StandardScaler(), CRDetector()).fit(X), path)
    rewrite(path, edit)
    with pytest.raises(ValueError, match=match):
        load(path)


@pytest.mark.parametrize("text, match", [
    ('{"format": NaN}', "holds NaN"),
    ('{"format": 1e999}', "overflows float64"),
    ('{"format": 1, "format": 2}', "repeats a key"),
    ("[" * 100_000, "nested too deeply"),
    (b"\xff", "can't decode"),
])
def test_malformed_header_is_refused(model_path, text, match):
    with zipfile.ZipFile(model_path, "w") as archive:
        archive.writestr("header.json", text)
    with pytest.raises(ValueError, match=match):
        load(model_path)


def test_members_other_than_declared_are_refused(model_path):
    rewrite(model_path, members={"run_me.py": b"print('hi')"})
    with pytest.raises(ValueError, match="are not the header and the arrays"):
        load(model_path)


def test_members_claiming_more_than_the_file_are_refused(model_path):
    raw = bytearray(model_path.read_bytes())
    first_entry = raw.find(b"PK\x01\x02")  # central directory: header.json first
    struct.pack_into("<II", raw, first_entry + 20, 2**31, 2**31)
    model_path.write_bytes(bytes(raw))
    with pytest.raises(ValueError, match="its members claim 2147"):
        load(model_path)


def test_compressed_members_are_refused(model_path):
    with zipfile.ZipFile(model_path) as archive:
        parts = {info.filename: archive.read(info) for info in archive.infolist()}
    with zipfile.ZipFile(model_path, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, data in parts.items():
            archive.writestr(name, data)
    with pytest.raises(ValueError, match="compressed or encrypted"):
        load(model_path)


class MakesDirectory:
    """Unpickling it creates a directory: proof that code ran."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return os.mkdir, (self.path,)


def assert_runs_code(read, marker):
    """The hostile file is live: reading it unsafely creates ``marker``."""
    read()
    assert marker.is_dir()
    marker.rmdir()


@pytest.mark.parametrize("dump, unsafe_load", [
    (lambda obj, path: path.write_bytes(pickle.dumps(obj)),
     lambda path: pickle.loads(path.read_bytes())),
    (joblib.dump, joblib.load),
], ids=["pickle", "joblib"])
def test_pickle_disguised_as_a_model_runs_no_code(tmp_path, dump, unsafe_load):
    marker, path = tmp_path / "code-ran", tmp_path / "model.npz"
    dump(MakesDirectory(marker), path)
    assert_runs_code(lambda: unsafe_load(path), marker)
    with pytest.raises(ValueError, match="Pickle and joblib files are never read"):
        load(path)
    assert not marker.exists()


def test_pickled_object_array_inside_the_archive_runs_no_code(tmp_path, model_path):
    marker = tmp_path / "code-ran"
    buffer = io.BytesIO()
    np.save(buffer, np.array([MakesDirectory(marker)], dtype=object))
    npy = buffer.getvalue()
    assert_runs_code(lambda: np.load(io.BytesIO(npy), allow_pickle=True), marker)
    rewrite(model_path, members={"crdetector.gram_.npy": npy})
    with pytest.raises(ValueError, match="holds object of shape"):
        load(model_path)
    assert not marker.exists()


def test_all_and_doctests():
    import doctest

    assert sorted(persistence.__all__) == ["FORMAT_VERSION", "load", "save"]
    assert doctest.testmod(persistence).failed == 0
