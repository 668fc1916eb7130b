"""Safe model files of CSE's steps, ContrastiveEmbedder and KMeansDetector: round
trips that transform and score identically, and tampered fields refused. The
file format itself is tested in test_persistence.py."""

import numpy as np
import pytest
from _model_files import assert_refused, replace_array, rewrite
from numpy.testing import assert_array_equal
from sklearn.pipeline import make_pipeline

from crdistance import CRDetector
from crdistance.kmeans import KMeansDetector
from crdistance.persistence import load, save

pytest.importorskip("torch")
from crdistance.featurizer import ContrastiveEmbedder  # noqa: E402

EMBEDDER_ARRAYS = ("mean_", "scale_")
EMBEDDER_LISTS = ("coefs_", "intercepts_", "decoder_coefs_", "decoder_intercepts_")
EMBEDDER_SCALARS = ("n_features_in_", "n_features_out_", "n_iter_", "best_epoch_",
                    "n_defective_patches_", "defect_source_", "loss_curve_",
                    "validation_loss_curve_", "pull_loss_curve_", "push_loss_curve_",
                    "reconstruction_loss_curve_")


def embedder(**params):
    return ContrastiveEmbedder(**{"n_components": 4, "hidden_size": 8,
                                  "max_epochs": 2, "random_state": 0,
                                  "progress": False, **params})


@pytest.fixture(scope="module")
def patches():
    return np.random.default_rng(0).normal(size=(12, 6, 6, 8)).astype(np.float32)


@pytest.fixture(scope="module")
def queries():
    return np.random.default_rng(1).normal(size=(5, 6, 6, 8)).astype(np.float32)


@pytest.fixture(scope="module", params=["CRDetector", "KMeansDetector"])
def cse_pipeline(request, patches):
    detector = (CRDetector() if request.param == "CRDetector"
                else KMeansDetector(n_clusters=3, random_state=0))
    return make_pipeline(embedder(), detector).fit(patches)


@pytest.fixture(scope="module")
def kmeans_pipeline(patches):
    return make_pipeline(embedder(), KMeansDetector(n_clusters=3, random_state=0)
                         ).fit(patches)


def round_trip(model, path):
    save(model, path)
    return load(path)


def assert_same_embedder(loaded, fitted):
    assert type(loaded) is ContrastiveEmbedder
    assert loaded.get_params() == fitted.get_params()
    for name in EMBEDDER_SCALARS:
        assert getattr(loaded, name) == getattr(fitted, name), name
    for name in EMBEDDER_ARRAYS:
        assert getattr(loaded, name).dtype == np.float64
        assert_array_equal(getattr(loaded, name), getattr(fitted, name), name)
    for name in EMBEDDER_LISTS:
        for array, expected in zip(getattr(loaded, name), getattr(fitted, name),
                                   strict=True):
            assert array.dtype == expected.dtype == np.float64, name
            assert_array_equal(array, expected, err_msg=name)


def test_cse_pipeline_round_trip_transforms_and_scores_identically(
        tmp_path, cse_pipeline, queries):
    loaded = round_trip(cse_pipeline, tmp_path / "cse.npz")
    assert [name for name, _ in loaded.steps] == [
        name for name, _ in cse_pipeline.steps]
    assert_same_embedder(loaded[0], cse_pipeline[0])
    assert cse_pipeline[0].n_iter_ == 2
    assert len(cse_pipeline[0].validation_loss_curve_) == 2
    embedding = loaded[0].transform(queries)
    assert embedding.dtype == np.float32
    assert_array_equal(embedding, cse_pipeline[0].transform(queries))
    assert_array_equal(loaded.score_samples(queries),
                       cse_pipeline.score_samples(queries))
    assert_array_equal(loaded[-1].score_patches(embedding),
                       cse_pipeline[-1].score_patches(embedding))
    assert_array_equal(loaded.predict(queries), cse_pipeline.predict(queries))
    # The same model gives the same bytes; the loaded one saves to them too.
    save(loaded, tmp_path / "again.npz")
    assert (tmp_path / "again.npz").read_bytes() == (tmp_path / "cse.npz").read_bytes()


def test_embedder_without_validation_and_with_given_defects(tmp_path, patches,
                                                            queries):
    rng = np.random.default_rng(2)
    shares = (rng.random((6, 6, 6)) > 0.5).astype(float)
    fitted = embedder(validation_fraction=0.0, early_stopping=False).fit(
        patches, defective=patches[:6] + 3 * shares[..., None].astype(np.float32),
        defect_shares=shares)
    assert fitted.validation_loss_curve_ == [] and fitted.defect_source_ == "given"
    loaded = round_trip(make_pipeline(fitted, CRDetector().fit(
        fitted.transform(patches))), tmp_path / "given.npz")
    assert_same_embedder(loaded[0], fitted)
    assert_array_equal(loaded[0].transform(queries[0, 0]),  # rows (n, d)
                       fitted.transform(queries[0, 0]))


def test_kmeans_detector_alone(tmp_path, rng):
    rows = np.repeat(rng.normal(size=(2, 3)), 10, axis=0)  # 2 distinct rows
    detector = KMeansDetector(n_clusters=3, contamination=0.1,
                              random_state=0).fit(rows)
    assert detector.n_clusters_ == 2
    loaded = round_trip(detector, tmp_path / "kmeans.npz")
    assert type(loaded) is KMeansDetector
    assert loaded.get_params() == detector.get_params()
    assert (loaded.n_clusters_, loaded.offset_, loaded.n_features_in_) == (
        2, detector.offset_, 3)
    assert_array_equal(loaded.cluster_centers_, detector.cluster_centers_)
    queries = rng.normal(size=(30, 3))
    for dtype in (np.float64, np.float32):
        assert_array_equal(loaded.score_samples(queries.astype(dtype)),
                           detector.score_samples(queries.astype(dtype)))


def test_featurizer_embedder_kmeans_pipeline_round_trip(tmp_path):
    pytest.importorskip("torchvision")
    from crdistance.featurizer import PatchFeaturizer

    images = np.random.default_rng(0).integers(0, 256, size=(5, 64, 64, 3),
                                               dtype=np.uint8)
    model = make_pipeline(
        PatchFeaturizer(backbone="resnet18", weights=None, resize=64, progress=False),
        embedder(), KMeansDetector(n_clusters=3, random_state=0),
    ).fit(images[:4])
    loaded = round_trip(model, tmp_path / "images.npz")
    assert loaded[1].n_features_in_ == 384
    assert_array_equal(loaded.score_samples(images), model.score_samples(images))


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


def truncate(name, shape):
    def edit(header, arrays):
        replace_array(header, arrays, name, arrays[name][tuple(map(slice, shape))])
    return edit


def drop_array(name):
    def edit(header, arrays):
        del arrays[name], header["arrays"][name]
    return edit


EMBEDDER = "contrastiveembedder"


@pytest.mark.parametrize("edit, match", [
    (truncate(f"{EMBEDDER}.mean_", (7,)),
     r"mean_' has shape \(7,\), but n_features_in_ gives \(8,\)"),
    (truncate(f"{EMBEDDER}.coefs_.0", (8, 7)),
     r"coefs_.0' has shape \(8, 7\), but n_features_in_, hidden_size and "
     r"n_components give \(8, 8\)"),
    (step_field(0, "params", hidden_size=9),
     r"coefs_.0' has shape \(8, 8\), .* \(8, 9\)"),
    (step_field(0, "fitted", n_features_in_=9), r"mean_' has shape \(8,\), .* \(9,\)"),
    (drop_array(f"{EMBEDDER}.decoder_intercepts_.0"),
     "needs the array 'contrastiveembedder.decoder_intercepts_.0'"),
    (set_entry(f"{EMBEDDER}.scale_", 3, 0.0), "scale_ is not all > 0"),
    (set_entry(f"{EMBEDDER}.scale_", 3, -1.0), "scale_ is not all > 0"),
    (set_entry(f"{EMBEDDER}.mean_", 0, np.nan), "mean_' holds NaN or infinity"),
    (set_entry(f"{EMBEDDER}.coefs_.1", (2, 1), np.inf), "holds NaN or infinity"),
    (set_entry(f"{EMBEDDER}.decoder_coefs_.1", (0, 0), -np.inf),
     "decoder_coefs_.1' holds NaN or infinity"),
    (step_field(0, "fitted", best_epoch_=0), r"best_epoch_=0 must be an int in \[1, "
     r"n_iter_=2\]"),
    (step_field(0, "fitted", best_epoch_=3), r"best_epoch_=3 must be an int"),
    (step_field(0, "fitted", best_epoch_=1.0), r"best_epoch_=1.0 must be an int"),
    (step_field(0, "fitted", n_iter_=3), "n_iter_=3 exceeds max_epochs=2"),
    (step_field(0, "fitted", n_iter_=0), "n_iter_ must be an int >= 1"),
    (step_field(0, "fitted", loss_curve_=[1.0]),
     r"loss_curve_ must be a list of 2 finite numbers \(n_iter_=2\)"),
    (step_field(0, "fitted", push_loss_curve_=[1.0, "1"]),
     "push_loss_curve_ must be a list of 2 finite"),
    (step_field(0, "fitted", pull_loss_curve_=[1.0, True]),
     "pull_loss_curve_ must be a list"),
    (step_field(0, "fitted", reconstruction_loss_curve_=None),
     "reconstruction_loss_curve_ must be a list"),
    (step_field(0, "fitted", validation_loss_curve_=[1.0]),
     "validation_loss_curve_ must be a list of 2 or 0 finite numbers"),
    (step_field(0, "fitted", defect_source_="images"),
     r"defect_source_='images' is not one of \['given', 'features'\]"),
    (step_field(0, "fitted", n_features_out_=5), "n_features_out_=5 is not "
     "n_components=4"),
    (step_field(0, "fitted", n_defective_patches_=0),
     "n_defective_patches_ must be an int >= 1"),
    (step_field(0, "fitted", n_samples_seen_=12),
     r"unknown fields \['n_samples_seen_'\]"),
    (step_field(0, "params", n_components=0), "'n_components' parameter"),
    (step_field(1, "fitted", n_features_in_=5),
     r"shape \(3, 4\), but n_clusters_ and n_features_in_ give \(3, 5\)"),
    (truncate("kmeansdetector.cluster_centers_", (2, 4)),
     r"shape \(2, 4\), but n_clusters_ and n_features_in_ give \(3, 4\)"),
    (step_field(1, "fitted", n_clusters_=2), r"give \(2, 4\)"),
    (step_field(1, "fitted", n_clusters_=0), "n_clusters_ must be an int >= 1"),
    (step_field(1, "params", n_clusters=2), "n_clusters_=3 exceeds n_clusters=2"),
    (step_field(1, "fitted", offset_=0.5), "offset_=0.5 is positive"),
    (set_entry("kmeansdetector.cluster_centers_", (1, 2), np.nan),
     "cluster_centers_' holds NaN or infinity"),
    (lambda h, a: h.update({"model": "KMeansDetector"}),
     r"a KMeansDetector model has the steps \['ContrastiveEmbedder', "
     r"'KMeansDetector'\]"),
    (lambda h, a: h["steps"][0].update({"class": "KMeansDetector"}),
     "is not one of .* or a Pipeline ending in its only detector"),
])
def test_tampered_cse_pipeline_is_refused(tmp_path, kmeans_pipeline, edit, match):
    path = tmp_path / "cse.npz"
    save(kmeans_pipeline, path)
    assert_refused(path, edit, match)


def test_width_between_embedder_and_detector_checked(tmp_path, kmeans_pipeline):
    path = tmp_path / "cse.npz"
    save(kmeans_pipeline, path)

    def edit(header, arrays):
        header["steps"][1]["fitted"]["n_features_in_"] = 5
        replace_array(header, arrays, "kmeansdetector.cluster_centers_",
                      np.zeros((3, 5)))

    assert_refused(path, edit, "step 'kmeansdetector' takes 5 features but step "
                   "'contrastiveembedder' gives 4 features")


def test_empty_validation_curve_loads(tmp_path, kmeans_pipeline, queries):
    """An embedder trained without validation has an empty validation curve,
    which the format accepts as well as one of n_iter_ epochs."""
    path = tmp_path / "cse.npz"
    model = kmeans_pipeline
    save(model, path)
    rewrite(path, step_field(0, "fitted", validation_loss_curve_=[]))
    loaded = load(path)
    assert loaded[0].validation_loss_curve_ == []
    assert_array_equal(loaded.score_samples(queries), model.score_samples(queries))
