"""Safe model files of GRADDetector and PerCategoryDetector: round trips that
score identically, and hostile fields refused with a message naming them. The
file format itself is tested in test_persistence.py."""

import sys

import numpy as np
import pytest
from _model_files import assert_refused, replace_array, rewrite
from numpy.testing import assert_array_equal
from sklearn.pipeline import Pipeline, make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector, LocalCRDetector
from crdistance.baselines import NearestNeighborDetector
from crdistance.categories import PerCategoryDetector
from crdistance.grad import GRADDetector
from crdistance.kmeans import KMeansDetector
from crdistance.persistence import load, save

GRAD_SCALARS = ("n_features_in_", "patch_shape_", "loss_curve_",
                "validation_loss_curve_", "n_iter_", "best_epoch_", "offset_")
GRAD = "graddetector"
ROUTER = "percategorydetector"


def grad(**params):
    return GRADDetector(**{"hidden_channels": 8, "n_blocks": 1, "max_epochs": 2,
                           "progress": False, "random_state": 0, **params})


@pytest.fixture(scope="module")
def torch():
    """torch, on one thread (restored after): tiny networks train in
    milliseconds on one thread, in seconds on several when the cores are busy.
    Skips the test without torch."""
    torch = pytest.importorskip("torch")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield torch
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def maps():
    return np.random.default_rng(0).normal(size=(20, 4, 4, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def queries():
    return np.random.default_rng(1).normal(size=(5, 4, 4, 6)).astype(np.float32)


@pytest.fixture(scope="module")
def fitted_grad(torch, maps):
    return grad().fit(maps)


@pytest.fixture(scope="module")
def rows_grad(torch):
    rows = np.random.default_rng(2).normal(size=(40, 6))
    return grad(validation_fraction=0.0, early_stopping=False).fit(rows)


def round_trip(model, path):
    save(model, path)
    return load(path)


def assert_same_grad(loaded, fitted):
    assert type(loaded) is GRADDetector
    assert loaded.get_params() == fitted.get_params()
    for name in GRAD_SCALARS:
        assert getattr(loaded, name) == getattr(fitted, name), name
    assert type(loaded.patch_shape_) is tuple
    for name in ("mean_", "scale_"):
        assert getattr(loaded, name).dtype == np.float64
        assert_array_equal(getattr(loaded, name), getattr(fitted, name), name)
    assert list(loaded.network_state_) == list(fitted.network_state_)
    for key, expected in fitted.network_state_.items():
        array = loaded.network_state_[key]
        assert array.dtype == expected.dtype, key
        assert array.shape == expected.shape, key
        assert_array_equal(array, expected, err_msg=key)


def test_grad_round_trip_scores_identically(tmp_path, fitted_grad, queries):
    loaded = round_trip(fitted_grad, tmp_path / "grad.npz")
    assert_same_grad(loaded, fitted_grad)
    dtypes = {array.dtype.name for array in loaded.network_state_.values()}
    assert dtypes == {"float32", "int64"}
    assert len(fitted_grad.validation_loss_curve_) == fitted_grad.n_iter_ == 2
    for method in ("score_samples", "score_patches", "decision_function",
                   "predict"):
        assert_array_equal(getattr(loaded, method)(queries),
                           getattr(fitted_grad, method)(queries), err_msg=method)
    # The same model gives the same bytes; the loaded one saves to them too.
    save(loaded, tmp_path / "again.npz")
    assert (tmp_path / "again.npz").read_bytes() == (
        tmp_path / "grad.npz").read_bytes()


def test_grad_of_rows_without_validation(tmp_path, rows_grad):
    assert rows_grad.validation_loss_curve_ == []
    assert rows_grad.patch_shape_ == (1, 1)
    loaded = round_trip(rows_grad, tmp_path / "rows.npz")
    assert_same_grad(loaded, rows_grad)
    rows = np.random.default_rng(3).normal(size=(7, 6))
    assert_array_equal(loaded.score_samples(rows), rows_grad.score_samples(rows))


def test_featurizer_grad_pipeline_round_trip(tmp_path, torch):
    pytest.importorskip("torchvision")
    from crdistance.featurizer import PatchFeaturizer

    images = np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3),
                                               dtype=np.uint8)
    model = make_pipeline(
        PatchFeaturizer(backbone="resnet18", weights=None, resize=64, progress=False),
        grad(),
    ).fit(images[:4])
    loaded = round_trip(model, tmp_path / "images.npz")
    assert loaded[1].n_features_in_ == 384 and loaded[1].patch_shape_ == (8, 8)
    assert_array_equal(loaded.score_samples(images), model.score_samples(images))


def test_loading_grad_without_torch_says_so(tmp_path, fitted_grad, monkeypatch):
    save(fitted_grad, tmp_path / "grad.npz")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch fails
    monkeypatch.delitem(sys.modules, "crdistance.grad._network")
    with pytest.raises(ImportError, match="GRADDetector model needs torch"):
        load(tmp_path / "grad.npz")


# Tampered GRAD fields, behind a valid checksum.


def step_field(section, step=0, **changes):
    def edit(header, arrays):
        header["steps"][step][section].update(changes)
    return edit


def substep_field(index, section, **changes):
    def edit(header, arrays):
        header["steps"][0]["fitted"]["detectors_"][index][section].update(changes)
    return edit


def set_entry(name, index, value):
    def edit(header, arrays):
        arrays[name] = arrays[name].copy()
        arrays[name][index] = value
    return edit


def truncate(name, shape):
    def edit(header, arrays):
        replace_array(header, arrays, name, arrays[name][tuple(map(slice, shape))])
    return edit


def rename_array(old, new):
    def edit(header, arrays):
        arrays[new] = arrays.pop(old)
        header["arrays"][new] = header["arrays"].pop(old)
    return edit


def add_array(name, array):
    def edit(header, arrays):
        arrays[name] = np.asarray(array, dtype=np.float64)
        header["arrays"][name] = {"dtype": "float64",
                                  "shape": list(arrays[name].shape)}
    return edit


NET = f"{GRAD}.network_state_"


@pytest.mark.parametrize("edit, match", [
    (rename_array(f"{NET}.fuse.0.weight", f"{NET}.fuse.0.weights"),
     "needs the array 'graddetector.network_state_.fuse.0.weight'"),
    (add_array(f"{NET}.extra.weight", np.zeros(3)),
     r"arrays \['graddetector.network_state_.extra.weight'\] belong to no step"),
    (truncate(f"{NET}.recover.weight", (6, 7, 1, 1)),
     r"recover.weight' has shape \(6, 7, 1, 1\), but n_features_in_, "
     r"patch_shape_ and the network parameters give \(6, 8, 1, 1\)"),
    (step_field("params", hidden_channels=9),
     r"fuse.0.weight' has shape \(8, 12, 1, 1\), .* \(9, 12, 1, 1\)"),
    (step_field("params", n_blocks=2),
     "needs the array 'graddetector.network_state_.blocks.1.conv1.weight'"),
    (step_field("params", n_blocks=0),
     r"arrays \['graddetector.network_state_.blocks.0.bn1.bias'"),
    (step_field("fitted", patch_shape_=[4, 5]),
     r"global_grid' has shape \(1, 96, 4, 4\), .* give \(1, 120, 4, 4\)"),
    (step_field("fitted", patch_shape_=[100000, 100000]),
     r"gives a network of \d+ values, over the 268435456 a model file "
     r"may hold; its global grid .* has 960000000000 \(n_features_in_=6, "
     r"patch_shape_=\[100000, 100000\]"),
    (step_field("params", local_grid_size=1 << 14),
     "over the 268435456 a model file may hold; its local grid"),
    (step_field("params", hidden_channels=1 << 13, n_blocks=1000),
     "over the 268435456 a model file may hold; its blocks"),
    (step_field("params", n_blocks=10**6), "n_blocks=1000000 is over 1024"),
    (step_field("fitted", patch_shape_=[4, 4.0]),
     r"patch_shape_=\[4, 4.0\] must be a list of two ints >= 1"),
    (step_field("fitted", patch_shape_=[16]), "patch_shape_=.* must be a list"),
    (step_field("fitted", patch_shape_=[0, 4]), "patch_shape_=.* must be a list"),
    (set_entry(f"{NET}.local_grid", (0, 1, 2, 3), np.nan),
     "local_grid' holds NaN or infinity"),
    (set_entry(f"{NET}.blocks.0.conv1.weight", (0, 0, 0, 0), -np.inf),
     "conv1.weight' holds NaN or infinity"),
    (set_entry(f"{GRAD}.mean_", 2, np.nan), "mean_' holds NaN or infinity"),
    (set_entry(f"{NET}.fuse.0.weight", (0, 0, 0, 0), 0.1),
     "network_state_.fuse.0.weight holds values float32 cannot represent"),
    (set_entry(f"{NET}.fuse.0.weight", (0, 0, 0, 0), 1e300),
     "fuse.0.weight holds values float32 cannot represent"),
    (set_entry(f"{NET}.fuse.1.running_var", 3, -1.0),
     "fuse.1.running_var \\(a variance\\) has a negative entry"),
    (set_entry(f"{NET}.blocks.0.bn2.num_batches_tracked", (), 2.5),
     "bn2.num_batches_tracked=.* is not an integer >= 0"),
    (set_entry(f"{NET}.fuse.1.num_batches_tracked", (), -1.0),
     "num_batches_tracked=.* is not an integer >= 0"),
    (set_entry(f"{GRAD}.scale_", 1, 0.0), "scale_ is not all > 0"),
    (truncate(f"{GRAD}.scale_", (5,)),
     r"scale_' has shape \(5,\), but n_features_in_ gives \(6,\)"),
    (step_field("fitted", n_features_in_=7), r"mean_' has shape \(6,\), .* \(7,\)"),
    (step_field("fitted", n_iter_=3), "n_iter_=3 exceeds max_epochs=2"),
    (step_field("fitted", best_epoch_=0), r"best_epoch_=0 must be an int in \[1, "
     r"n_iter_=2\]"),
    (step_field("fitted", best_epoch_=3), r"best_epoch_=3 must be an int"),
    (step_field("fitted", loss_curve_=[1.0]),
     r"loss_curve_ must be a list of 2 finite numbers \(n_iter_=2\)"),
    (step_field("fitted", validation_loss_curve_=[1.0, "1"]),
     "validation_loss_curve_ must be a list of 2 or 0 finite numbers"),
    (step_field("fitted", offset_=0.5), "offset_=0.5 is positive"),
    (step_field("fitted", network_state_={}), r"unknown fields \['network_state_'\]"),
    (step_field("params", contamination=0.9), "'contamination' parameter"),
])
def test_tampered_grad_is_refused(tmp_path, fitted_grad, edit, match):
    path = tmp_path / "grad.npz"
    save(fitted_grad, path)
    assert_refused(path, edit, match)


def test_empty_validation_curve_loads(tmp_path, fitted_grad, queries):
    path = tmp_path / "grad.npz"
    save(fitted_grad, path)
    rewrite(path, step_field("fitted", validation_loss_curve_=[]))
    loaded = load(path)
    assert loaded.validation_loss_curve_ == []
    assert_array_equal(loaded.score_samples(queries),
                       fitted_grad.score_samples(queries))


# PerCategoryDetector.


@pytest.fixture(scope="module")
def rows():
    rng = np.random.default_rng(4)
    X = np.concatenate([rng.normal(size=(30, 3)), 5 + rng.normal(size=(30, 3))])
    return X, ["bolt"] * 30 + ["nut"] * 30


def assert_same_router(loaded, router, queries):
    assert type(loaded) is PerCategoryDetector
    assert loaded.routing == router.routing
    assert (loaded.categories_, loaded.offset_, loaded.n_features_in_) == (
        router.categories_, router.offset_, router.n_features_in_)
    assert repr(loaded.detector) == repr(router.detector)
    assert_array_equal(loaded.category_means_, router.category_means_)
    assert [type(d) for d in loaded.detectors_] == [type(d) for d in
                                                   router.detectors_]
    for sub, expected in zip(loaded.detectors_, router.detectors_, strict=True):
        assert sub.get_params() == expected.get_params()
        assert sub.offset_ == expected.offset_
    assert_array_equal(loaded.route(queries), router.route(queries))
    for method in ("score_samples", "score_patches", "decision_function",
                   "predict"):
        assert_array_equal(getattr(loaded, method)(queries),
                           getattr(router, method)(queries), err_msg=method)


@pytest.mark.parametrize("detector", [
    None, CRDetector(lam=0.5), KMeansDetector(n_clusters=2, random_state=0),
    LocalCRDetector(n_cells=2, random_state=0),
], ids=["default", "crd", "kmeans", "local"])
@pytest.mark.parametrize("routing", ["nearest_mean", "min_score"])
def test_router_round_trip_scores_identically(tmp_path, rows, detector, routing):
    X, y = rows
    router = PerCategoryDetector(detector, routing=routing).fit(X, y)
    loaded = round_trip(router, tmp_path / "router.npz")
    assert_same_router(loaded, router, np.random.default_rng(5).normal(
        2.5, 3, size=(40, 3)))


@pytest.mark.parametrize("labels", [[3, 7], None], ids=["int", "none"])
def test_router_of_patch_sets_with_int_or_no_labels(tmp_path, labels):
    rng = np.random.default_rng(6)
    maps = rng.normal(size=(16, 4, 4, 3))
    y = None if labels is None else np.repeat(labels, 8)
    router = PerCategoryDetector(CRDetector(lam=1.0)).fit(maps, y)
    loaded = round_trip(router, tmp_path / "router.npz")
    assert loaded.categories_ == ([None] if labels is None else labels)
    assert_same_router(loaded, router, rng.normal(size=(5, 4, 4, 3)))


def test_router_in_a_pipeline(tmp_path, rows):
    X, y = rows
    model = make_pipeline(StandardScaler(), PerCategoryDetector()).fit(X, y)
    loaded = round_trip(model, tmp_path / "pipeline.npz")
    queries = np.random.default_rng(7).normal(size=(10, 3))
    assert_array_equal(loaded.score_samples(queries), model.score_samples(queries))


def test_router_of_grad_detectors(tmp_path, torch):
    rng = np.random.default_rng(8)
    maps = rng.normal(size=(16, 2, 2, 4)).astype(np.float32)
    router = PerCategoryDetector(grad(), routing="min_score").fit(
        maps, ["a"] * 8 + ["b"] * 8)
    loaded = round_trip(router, tmp_path / "router.npz")
    for sub, expected in zip(loaded.detectors_, router.detectors_, strict=True):
        assert_same_grad(sub, expected)
    assert_same_router(loaded, router, rng.normal(size=(4, 2, 2, 4)).astype(
        np.float32))
    # A step whose arrays would collide with the sub-detectors' is refused.
    model = Pipeline([(f"{ROUTER}.category0", StandardScaler()), (ROUTER, router)])
    model[0].fit(maps.reshape(-1, 4))
    with pytest.raises(ValueError, match="two steps store the array "
                       "'percategorydetector.category0.mean_'"):
        save(model, tmp_path / "collide.npz")


@pytest.mark.parametrize("y, match", [
    ([1.0] * 30 + [2.0] * 30, r"categories_ \[1.0, 2.0\] are not all str or all "
     "int"),
    ([True] * 30 + [False] * 30, "are not all str or all int"),
])
def test_save_refuses_other_labels(tmp_path, rows, y, match):
    router = PerCategoryDetector().fit(rows[0], y)
    with pytest.raises(TypeError, match=match):
        save(router, tmp_path / "router.npz")
    assert not (tmp_path / "router.npz").exists()


def test_save_refuses_other_detectors(tmp_path, rows):
    X, y = rows
    with pytest.raises(TypeError, match="detector is a NearestNeighborDetector"):
        save(PerCategoryDetector(NearestNeighborDetector()).fit(X, y),
             tmp_path / "router.npz")
    router = PerCategoryDetector(CRDetector()).fit(X, y)
    router.set_params(detector__lam=3.0)  # after fit: the template differs
    with pytest.raises(ValueError, match="another class or other parameters"):
        save(router, tmp_path / "router.npz")


@pytest.fixture
def router_path(tmp_path, rows):
    path = tmp_path / "router.npz"
    save(PerCategoryDetector(KMeansDetector(n_clusters=2, random_state=0)).fit(
        *rows), path)
    return path


def drop_detector(index):
    def edit(header, arrays):
        del header["steps"][0]["fitted"]["detectors_"][index]
    return edit


def set_substep(index, key, value):
    def edit(header, arrays):
        header["steps"][0]["fitted"]["detectors_"][index][key] = value
    return edit


MEANS = f"{ROUTER}.category_means_"
SUB1 = f"{ROUTER}.category1"


@pytest.mark.parametrize("edit, match", [
    (set_substep(1, "class", "NearestNeighborDetector"),
     r"detectors_\[1\] has class 'NearestNeighborDetector'; a PerCategoryDetector "
     r"holds \['CRDetector', 'LocalCRDetector', 'KMeansDetector', 'GRADDetector'\]"),
    (set_substep(0, "class", "PerCategoryDetector"), r"detectors_\[0\] has class "
     "'PerCategoryDetector'"),
    (set_substep(0, "class", "StandardScaler"),
     r"detectors_\[0\] has class 'StandardScaler'"),
    (set_substep(1, "class", "CRDetector"),
     r"'percategorydetector.category1' \(CRDetector\) params has unknown fields"),
    (drop_detector(1),
     "has 1 detectors_ for 2 categories_"),
    (step_field("fitted", categories_=["bolt", "nut", "washer"]),
     "has 2 detectors_ for 3 categories_"),
    (step_field("fitted", detectors_=[]), "detectors_ must be a non-empty list"),
    (step_field("fitted", categories_=["nut", "nut"]),
     r"categories_ \['nut', 'nut'\] are not distinct and sorted"),
    (step_field("fitted", categories_=["nut", "bolt"]), "are not distinct and sorted"),
    (step_field("fitted", categories_=["bolt", 2]), "must be all str or all int"),
    (step_field("fitted", categories_=[1.0, 2.0]), "must be all str or all int"),
    (step_field("fitted", categories_=[None, None]), "must be all str or all int"),
    (step_field("fitted", categories_=[]), "categories_ must be a non-empty list"),
    (truncate(MEANS, (1, 3)),
     r"category_means_' has shape \(1, 3\), but categories_ and n_features_in_ "
     r"give \(2, 3\)"),
    (set_entry(MEANS, (1, 2), np.nan), "category_means_' holds NaN or infinity"),
    (step_field("fitted", n_features_in_=4),
     r"detectors_\[0\] takes 3 features, not n_features_in_=4"),
    (substep_field(1, "fitted", n_features_in_=4),
     r"'percategorydetector.category1.cluster_centers_' has shape \(2, 3\)"),
    (set_substep(1, "name", "other"),
     r"detectors_\[1\] is named 'other', not 'percategorydetector.category1'"),
    (substep_field(1, "params", n_clusters=3),
     r"detectors_\[1\] is not a clone of detectors_\[0\]"),
    (substep_field(0, "fitted", offset_=0.0), r"detectors_\[0\] has offset_=0"),
    (substep_field(0, "fitted", offset_=1.0), "offset_=1.0 is positive"),
    (set_entry(f"{SUB1}.cluster_centers_", (0, 0), np.inf),
     "category1.cluster_centers_' holds NaN or infinity"),
    (step_field("params", detector="Pickle"),
     r"parameter detector='Pickle' is not null or one of"),
    (step_field("params", detector="CRDetector"),
     r"detectors_\[0\] is a KMeansDetector but parameter detector gives CRDetector"),
    (step_field("params", detector=None),
     r"detectors_\[0\] is a KMeansDetector but parameter detector gives CRDetector"),
    (step_field("params", routing="random"), "'routing' parameter"),
])
def test_tampered_router_is_refused(router_path, edit, match):
    assert_refused(router_path, edit, match)


def test_router_width_checked(router_path):
    def edit(header, arrays):
        substep_field(1, "fitted", n_features_in_=4)(header, arrays)
        replace_array(header, arrays, f"{SUB1}.cluster_centers_", np.zeros((2, 4)))

    assert_refused(router_path, edit,
                   r"detectors_\[1\] takes 4 features, not n_features_in_=3")


def test_default_router_detector_checked(tmp_path, rows):
    path = tmp_path / "router.npz"
    save(PerCategoryDetector().fit(*rows), path)
    assert_refused(path, substep_field(0, "params", contamination=0.1),
                   r"detectors_\[0\] has the parameters .* not those of "
                   "detector=None")
