"""Safe model files of local CRD and of kernel CRD (RBFSampler) steps: round
trips, and tampered fields refused. The file format itself is tested in
test_persistence.py."""

import numpy as np
import pytest
from _model_files import assert_refused, replace_array
from numpy.testing import assert_array_equal
from sklearn.kernel_approximation import RBFSampler
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector, LocalCRDetector
from crdistance.persistence import load, save

CELL_ARRAYS = ("cell_centers_", "cell_grams_", "cell_counts_", "residual_operators_",
               "cell_weights_", "scoring_operators_")


@pytest.fixture
def X(rng):
    return rng.normal(size=(300, 6)) @ rng.normal(size=(6, 6))


def round_trip(model, path):
    save(model, path)
    return load(path)


def assert_same_local(loaded, detector):
    assert type(loaded) is LocalCRDetector
    assert loaded.get_params() == detector.get_params()
    for name in ("feature_groups_", "n_samples_seen_", "offset_", "n_features_in_"):
        assert getattr(loaded, name) == getattr(detector, name)
    for name in CELL_ARRAYS:
        for array, expected in zip(getattr(loaded, name), getattr(detector, name),
                                   strict=True):
            assert array.dtype == expected.dtype, name
            assert_array_equal(array, expected, err_msg=name)


def assert_scores_identically(loaded, model, queries):
    for dtype in (np.float64, np.float32):
        assert_array_equal(loaded.score_samples(queries.astype(dtype)),
                           model.score_samples(queries.astype(dtype)))
    assert_array_equal(loaded.predict(queries), model.predict(queries))


@pytest.mark.parametrize("params", [
    {"n_cells": 4},
    {"n_cells": 3, "feature_groups": [2, 4], "n_nearest_cells": 1,
     "contamination": "max"},
    {"n_cells": 1, "lam": 0.5, "lam_scale": "absolute", "chunk_size": 7},
])
def test_local_detector_round_trip_scores_identically(tmp_path, X, rng, params):
    detector = LocalCRDetector(random_state=0, **params).fit(X)
    loaded = round_trip(detector, tmp_path / "local.npz")
    assert_same_local(loaded, detector)
    assert_scores_identically(loaded, detector, rng.normal(size=(50, 6)))


def test_local_detector_of_patch_sets_and_partial_fit_after_loading(tmp_path, rng):
    patches = rng.normal(size=(30, 4, 4, 6))
    detector = LocalCRDetector(n_cells=4, random_state=0).fit(patches[:20])
    loaded = round_trip(detector, tmp_path / "local.npz")
    queries = rng.normal(size=(3, 4, 4, 6))
    assert_array_equal(loaded.score_patches(queries), detector.score_patches(queries))
    assert_array_equal(loaded.decision_function(queries),
                       detector.decision_function(queries))
    assert_same_local(loaded.partial_fit(patches[20:]),
                      detector.partial_fit(patches[20:]))


def test_documented_kernel_pipeline_round_trip(tmp_path, X, rng):
    model = make_pipeline(
        StandardScaler(), RBFSampler(gamma="scale", n_components=1024, random_state=0),
        CRDetector(lam=0.01, lam_scale="trace"),
    ).fit(X)
    loaded = round_trip(model, tmp_path / "kernel.npz")
    assert [name for name, _ in loaded.steps] == [
        "standardscaler", "rbfsampler", "crdetector"]
    sampler = loaded.named_steps["rbfsampler"]
    assert sampler.get_params() == model[1].get_params()
    assert sampler._gamma == model[1]._gamma != 1.0  # resolved from the data
    assert_array_equal(sampler.get_feature_names_out(),
                       model[1].get_feature_names_out())
    assert_scores_identically(loaded, model, rng.normal(size=(50, 6)))


def test_float32_sampler_and_local_detector_pipeline(tmp_path, X, rng):
    model = make_pipeline(
        RBFSampler(gamma=0.5, n_components=32, random_state=0),
        LocalCRDetector(n_cells=3, random_state=0),
    ).fit(X.astype(np.float32))
    loaded = round_trip(model, tmp_path / "pipeline.npz")
    assert loaded[0].random_weights_.dtype == np.float32
    queries = rng.normal(size=(50, 6)).astype(np.float32)
    features = loaded[0].transform(queries)
    assert features.dtype == np.float32
    assert_array_equal(features, model[0].transform(queries))
    assert_same_local(loaded[-1], model[-1])
    assert_scores_identically(loaded, model, queries)


def test_random_state_instance_is_refused_by_save(tmp_path, X):
    detector = LocalCRDetector(n_cells=2, random_state=np.random.RandomState(0))
    with pytest.raises(TypeError, match="parameter 'random_state' is a RandomState"):
        save(detector.fit(X), tmp_path / "local.npz")
    assert not (tmp_path / "local.npz").exists()


# Tampered fields, behind a valid checksum.


def step_field(step, section, **changes):
    def edit(header, arrays):
        header["steps"][step][section].update(changes)
    return edit


def set_entry(name, index, value):
    def edit(header, arrays):
        arrays[name] = arrays[name].copy()
        arrays[name][index] = value
    return edit


def drop_array(name):
    def edit(header, arrays):
        del arrays[name], header["arrays"][name]
    return edit


def move_count(header, arrays):
    counts = arrays["localcrdetector.cell_counts_.1"].copy()
    counts[:2] += [-0.5, 0.5]
    arrays["localcrdetector.cell_counts_.1"] = counts


@pytest.mark.parametrize("edit, match", [
    (step_field(0, "fitted", n_samples_seen_=301),
     r"cell_counts_.0 are not integers >= 0 adding up to n_samples_seen_=301"),
    (move_count, r"cell_counts_.1 are not integers"),
    (set_entry("localcrdetector.cell_counts_.0", 0, -1.0), "not integers >= 0"),
    (set_entry("localcrdetector.cell_weights_.1", 2, 0.0),
     r"cell_weights_.1 are not all > 0"),
    (set_entry("localcrdetector.cell_grams_.0", (1, 0, 1), 1e3),
     r"cell_grams_.0 is not symmetric"),
    (set_entry("localcrdetector.residual_operators_.1", (0, 1, 2), 1e-3),
     r"residual_operators_.1 is not symmetric"),
    (set_entry("localcrdetector.cell_grams_.1", (2, 3, 3), -1.0),
     r"cell_grams_.1 has a negative diagonal"),
    (set_entry("localcrdetector.residual_operators_.0", (0, 0, 0), 1.5),
     r"residual_operators_.0 has a diagonal entry outside \[0, 1\]"),
    (set_entry("localcrdetector.cell_centers_.1", (0, 0), np.inf),
     "holds NaN or infinity"),
    (lambda h, a: replace_array(h, a, "localcrdetector.cell_centers_.0",
                                a["localcrdetector.cell_centers_.0"][:2]),
     r"shape \(2, 2\), but n_cells_ and feature_groups give \(3, 2\)"),
    (step_field(0, "params", n_cells=2),
     r"n_cells_=\[3, 3\] must be one int in \[1, n_cells=2\]"),
    (step_field(0, "fitted", n_cells_=[2, 3]), r"give \(2, 2\)"),
    (step_field(0, "fitted", n_cells_=[3, 3.0]), "must be one int"),
    (step_field(0, "params", feature_groups=[2, 3]),
     r"feature_groups=\[2, 3\] are not sizes >= 1 adding up to n_features_in_=6"),
    (step_field(0, "params", feature_groups=["2", 4]), "are not sizes >= 1"),
    (step_field(0, "params", feature_groups=None),
     r"n_cells_=\[3, 3\] must be one int .* per feature group of \[6\]"),
    (step_field(0, "fitted", offset_=0.5), "offset_=0.5 is positive"),
    (step_field(0, "fitted", scoring_operators_=[]),
     r"unknown fields \['scoring_operators_'\]"),
    (drop_array("localcrdetector.residual_operators_.1"),
     "needs the array 'localcrdetector.residual_operators_.1'"),
    (lambda h, a: h["steps"][0].update({"class": "CRDetector"}),
     r"a LocalCRDetector model has the steps \['CRDetector'\]"),
])
def test_tampered_local_detector_is_refused(tmp_path, X, edit, match):
    path = tmp_path / "local.npz"
    save(LocalCRDetector(n_cells=3, feature_groups=[2, 4], random_state=0).fit(X),
         path)
    assert_refused(path, edit, match)


@pytest.mark.parametrize("edit, match", [
    (step_field(1, "fitted", _gamma=0.0),
     r"_gamma=0.0 is not the one gamma='scale' gives"),
    (step_field(1, "params", gamma=0.5), r"is not the one gamma=0.5 gives"),
    (step_field(1, "params", gamma="auto"), "'gamma' parameter of RBFSampler must be"),
    (step_field(1, "params", n_components=8),
     r"shape \(6, 16\), but n_features_in_ and n_components give \(6, 8\)"),
    (step_field(1, "fitted", n_features_in_=5),
     r"shape \(6, 16\), but n_features_in_ and n_components give \(5, 16\)"),
    (step_field(1, "fitted", n_samples_seen_=300),
     r"unknown fields \['n_samples_seen_'\]"),
    (step_field(1, "fitted", weights_dtype="float16"),
     "weights_dtype='float16' is not 'float32' or 'float64'"),
    (step_field(1, "fitted", weights_dtype="float32"), "float32 cannot represent"),
    (set_entry("rbfsampler.random_offset_", 3, 7.0),
     r"random_offset_ is not in \[0, 2 pi\]"),
    (set_entry("rbfsampler.random_weights_", (2, 5), np.nan), "holds NaN or infinity"),
    (lambda h, a: h["steps"][1].update({"class": "LocalCRDetector"}),
     "is not one of .* or a Pipeline ending in its only detector"),
])
def test_tampered_kernel_pipeline_is_refused(tmp_path, X, edit, match):
    path = tmp_path / "kernel.npz"
    save(make_pipeline(StandardScaler(), RBFSampler(gamma="scale", n_components=16,
                                                    random_state=0),
                       CRDetector()).fit(X), path)
    assert_refused(path, edit, match)
