"""NoveltyKFold, anomaly_auroc and CRDetectorCV against GridSearchCV."""

import numpy as np
import pytest
import scipy.io
from sklearn.metrics import average_precision_score, roc_auc_score
from sklearn.model_selection import GridSearchCV, KFold, PredefinedSplit
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector, model_selection
from crdistance.model_selection import CRDetectorCV, NoveltyKFold, anomaly_auroc
from crdistance.model_selection._synthetic import inflate_variance

LAMS = np.logspace(-2, 4, 7)
TRACE_LAMS = np.logspace(-5, 1, 7)
SCORES = ["mean_test_score", "std_test_score",
          *(f"split{k}_test_score" for k in range(5))]

@pytest.fixture(scope="module")
def wbc(shared_data):
    """ODDS wbc (Rayana 2016): 357 normal and 21 anomalous samples, 30 features;
    labels +1 normal / -1 anomaly."""
    data = scipy.io.loadmat(shared_data / "odds" / "wbc.mat")
    return data["X"], np.where(data["y"].ravel() == 1, -1, 1)


@pytest.fixture(scope="module")
def wbc_scaled(wbc):
    X, y = wbc
    return StandardScaler().fit(X[y == 1]).transform(X), y


def _labels(rng, n=40, n_anomalies=7):
    y = np.ones(n, dtype=int)
    y[rng.choice(n, n_anomalies, replace=False)] = -1
    return y


def _grid_search(estimator, param, lams, cv, X, y, scoring=anomaly_auroc):
    return GridSearchCV(estimator, {param: lams}, cv=cv, scoring=scoring,
                        refit=False).fit(X, y)


def _assert_same_results(path, search):
    for key in [key for key in search.cv_results_ if key.endswith("_test_score")]:
        tolerance = 0 if key.startswith("rank") else 1e-8
        np.testing.assert_allclose(path.cv_results_[key], search.cv_results_[key],
                                   rtol=0, atol=tolerance, err_msg=key)
    assert path.best_lam_ == search.best_params_[next(iter(search.best_params_))]
    assert path.best_score_ == pytest.approx(search.best_score_, abs=1e-8)


@pytest.mark.parametrize("convention, normal, anomaly", [("outlier", 1, -1),
                                                          ("binary", 0, 1)])
def test_novelty_kfold_trains_on_normal_samples_only(rng, convention, normal, anomaly):
    is_anomaly = _labels(rng) == -1
    y = np.where(is_anomaly, anomaly, normal)
    splitter = NoveltyKFold(4, label_convention=convention)
    held_out = []
    for train, test in splitter.split(np.zeros((y.size, 3)), y):
        assert not is_anomaly[train].any()
        assert set(np.flatnonzero(is_anomaly)) <= set(test)
        assert not set(train) & set(test)
        assert set(train) | set(test) == set(range(y.size))
        held_out.extend(test[~is_anomaly[test]])
    assert sorted(held_out) == list(np.flatnonzero(~is_anomaly))
    assert splitter.get_n_splits() == 4


def test_novelty_kfold_without_labels_splits_like_kfold():
    X = np.zeros((12, 2))
    for (train, test), (k_train, k_test) in zip(NoveltyKFold(3).split(X),
                                                KFold(3).split(X), strict=True):
        np.testing.assert_array_equal(train, k_train)
        np.testing.assert_array_equal(test, k_test)


BAD_LABELS = [
    ("outlier", [1, 0, 1, -1], r"\[0\].*label_convention='binary'"),
    ("binary", [0, -1, 1, 0], r"\[-1\].*label_convention='outlier'"),
    ("outlier", [1, 2, -1, 1], r"got \[2\]"),
    ("outlier", [-1, -1, -1, -1], "no normal sample"),
    ("binary", [1, 1, 1, 1], "no normal sample"),
]


@pytest.mark.parametrize("convention, y, match", BAD_LABELS)
def test_bad_labels_raise(convention, y, match):
    X = np.ones((4, 2))
    with pytest.raises(ValueError, match=match):
        next(NoveltyKFold(2, label_convention=convention).split(X, y))
    with pytest.raises(ValueError, match=match):
        CRDetectorCV(cv=2, label_convention=convention).fit(X, y)


def test_novelty_kfold_rejects_unknown_convention():
    with pytest.raises(ValueError, match="label_convention must be"):
        NoveltyKFold(label_convention="auto")


def test_anomaly_auroc_reads_both_conventions(rng):
    detector = CRDetector(lam=1.0).fit(rng.normal(size=(50, 4)))
    X = rng.normal(size=(20, 4)) * np.r_[np.ones(10), 3 * np.ones(10)][:, None]
    is_anomaly = np.r_[np.zeros(10, dtype=bool), np.ones(10, dtype=bool)]
    expected = roc_auc_score(is_anomaly, -detector.score_samples(X))
    assert 0.5 < expected < 1.0
    assert anomaly_auroc(detector, X, np.where(is_anomaly, -1, 1)) == expected
    assert anomaly_auroc(detector, X, is_anomaly.astype(int)) == expected
    assert anomaly_auroc(detector, X, is_anomaly) == expected
    with pytest.raises(ValueError, match="needs normal and anomalous"):
        anomaly_auroc(detector, X, np.ones(20))
    with pytest.raises(ValueError, match="needs normal and anomalous"):
        anomaly_auroc(detector, X, np.r_[np.zeros(10), 2 * np.ones(10)])


def test_grid_search_pipeline_trains_on_normal_folds(wbc):
    X, y = wbc
    pipeline = make_pipeline(StandardScaler(), CRDetector())
    search = _grid_search(pipeline, "crdetector__lam", LAMS, NoveltyKFold(), X, y)
    normal, anomalies = np.flatnonzero(y == 1), np.flatnonzero(y == -1)
    for k, (train, held_out) in enumerate(KFold(5).split(normal)):
        test = np.r_[normal[held_out], anomalies]
        for j, lam in enumerate(LAMS):
            model = make_pipeline(StandardScaler(), CRDetector(lam=lam))
            model.fit(X[normal[train]])
            expected = roc_auc_score(y[test] == -1, -model.score_samples(X[test]))
            assert search.cv_results_[f"split{k}_test_score"][j] == pytest.approx(
                expected, abs=1e-12)
    binary = _grid_search(pipeline, "crdetector__lam", LAMS,
                          NoveltyKFold(label_convention="binary"), X, (y == -1) * 1)
    for key in SCORES:
        np.testing.assert_array_equal(binary.cv_results_[key], search.cv_results_[key])


@pytest.mark.parametrize("lam_scale, lams", [("absolute", LAMS), ("trace", TRACE_LAMS)])
def test_path_matches_grid_search(wbc_scaled, lam_scale, lams):
    X, y = wbc_scaled
    search = _grid_search(CRDetector(lam_scale=lam_scale), "lam", lams,
                          NoveltyKFold(), X, y)
    path = CRDetectorCV(lams=lams, lam_scale=lam_scale, label_convention="outlier")
    _assert_same_results(path.fit(X, y), search)
    assert len(set(path.cv_results_["mean_test_score"].round(6))) > 2


def test_path_matches_grid_search_with_binary_labels(wbc_scaled):
    X, y = wbc_scaled
    y01 = (y == -1).astype(int)
    search = _grid_search(CRDetector(), "lam", LAMS,
                          NoveltyKFold(3, label_convention="binary"), X, y01)
    path = CRDetectorCV(lams=LAMS, cv=3, label_convention="binary").fit(X, y01)
    _assert_same_results(path, search)


def _anomaly_average_precision(estimator, X, y):
    return average_precision_score(y == -1, -estimator.score_samples(X))


def test_path_matches_grid_search_with_scorer_and_holdout(wbc_scaled):
    X, y = wbc_scaled
    holdout = np.where((y == -1) | (np.arange(y.size) % 3 == 0), 0, -1)
    cv = PredefinedSplit(holdout)
    search = _grid_search(CRDetector(), "lam", LAMS, cv, X, y,
                          scoring=_anomaly_average_precision)
    path = CRDetectorCV(lams=LAMS, cv=cv, scoring=_anomaly_average_precision,
                        label_convention="outlier")
    _assert_same_results(path.fit(X, y), search)


@pytest.mark.parametrize("scoring", ["roc_auc", "average_precision"])
@pytest.mark.parametrize("convention", ["outlier", "binary"])
def test_scorer_names_score_as_in_grid_search(wbc_scaled, scoring, convention):
    X, y = wbc_scaled
    if convention == "binary":
        y = (y == -1).astype(int)
    cv = NoveltyKFold(3, label_convention=convention)
    search = _grid_search(CRDetector(), "lam", LAMS, cv, X, y, scoring=scoring)
    path = CRDetectorCV(lams=LAMS, cv=cv, scoring=scoring,
                        label_convention=convention).fit(X, y)
    _assert_same_results(path, search)
    assert len(set(path.cv_results_["mean_test_score"].round(6))) > 2


def test_roc_auc_name_is_anomaly_auroc_for_outlier_labels(wbc_scaled):
    X, y = wbc_scaled
    by_name = CRDetectorCV(lams=LAMS, scoring="roc_auc", label_convention="outlier")
    default = CRDetectorCV(lams=LAMS, label_convention="outlier")
    np.testing.assert_allclose(by_name.fit(X, y).cv_results_["mean_test_score"],
                               default.fit(X, y).cv_results_["mean_test_score"])


@pytest.mark.parametrize("scoring", ["accuracy", "neg_log_loss"])
def test_scorers_that_need_predictions_are_refused(wbc_scaled, scoring):
    X, y = wbc_scaled
    detector = CRDetectorCV(lams=LAMS, scoring=scoring, label_convention="outlier")
    with pytest.raises(ValueError, match="ranking metrics only"):
        detector.fit(X, y)


def test_unknown_scorer_name_is_refused(wbc_scaled):
    X, _ = wbc_scaled
    with pytest.raises(ValueError, match="'scoring' parameter of CRDetectorCV"):
        CRDetectorCV(scoring="roc-auc").fit(X)


def _patch_sets(rng, n_normal=36, n_anomalies=8, h=3, w=3, d=8):
    """Images of h x w patches on a 4-dimensional subspace; an anomalous image
    has one patch off it, of varying strength."""
    basis = rng.normal(size=(4, d))
    X = rng.normal(size=(n_normal + n_anomalies, h, w, 4)) @ basis
    X += 0.05 * rng.normal(size=X.shape)
    X[n_normal:, 1, 1] += 0.3 * rng.normal(size=(n_anomalies, d))
    return X, np.r_[np.ones(n_normal, dtype=int), -np.ones(n_anomalies, dtype=int)]


def test_patch_sets_with_image_labels(rng):
    X, y = _patch_sets(rng)
    search = _grid_search(CRDetector(), "lam", LAMS, NoveltyKFold(4), X, y)
    path = CRDetectorCV(lams=LAMS, cv=4, label_convention="outlier").fit(X, y)
    _assert_same_results(path, search)
    assert len(set(path.cv_results_["mean_test_score"].round(6))) > 2
    reference = CRDetector(lam=path.best_lam_).fit(X[y == 1])
    np.testing.assert_allclose(path.score_samples(X), reference.score_samples(X))
    np.testing.assert_allclose(path.score_patches(X), reference.score_patches(X))
    assert path.score_patches(X).shape == X.shape[:3]


def test_refit_on_normal_samples(wbc_scaled):
    X, y = wbc_scaled
    path = CRDetectorCV(lams=TRACE_LAMS, lam_scale="trace",
                        contamination=0.05, label_convention="outlier").fit(X, y)
    normal = X[y == 1]
    reference = CRDetector(lam=path.best_lam_, lam_scale="trace",
                           contamination=0.05).fit(normal)
    assert path.lam_ == pytest.approx(
        path.best_lam_ * np.trace(normal.T @ normal) / X.shape[1])
    assert path.lam_ == pytest.approx(reference.lam_)
    assert path.offset_ == pytest.approx(reference.offset_)
    np.testing.assert_allclose(path.score_samples(X), reference.score_samples(X))
    np.testing.assert_allclose(path.decision_function(X),
                               path.score_samples(X) - path.offset_)
    np.testing.assert_array_equal(path.predict(X), reference.predict(X))
    assert path.n_splits_ == 5
    assert path.best_index_ == list(TRACE_LAMS).index(path.best_lam_)


def test_synthetic_anomalies_join_every_test_fold(wbc_scaled):
    X, y = wbc_scaled
    normal, X_synthetic = X[y == 1], X[y == -1]
    search = _grid_search(CRDetector(), "lam", LAMS, NoveltyKFold(), X, y)
    path = CRDetectorCV(lams=LAMS).fit(normal, X_synthetic=X_synthetic)
    _assert_same_results(path, search)


def test_normal_only_rule_is_reproducible_and_scale_free(wbc_scaled):
    normal = wbc_scaled[0][wbc_scaled[1] == 1]
    path = CRDetectorCV(lams=TRACE_LAMS, lam_scale="trace", random_state=0)
    scores = path.fit(normal).cv_results_["mean_test_score"]
    assert len(set(scores.round(6))) > 2
    np.testing.assert_array_equal(path.fit(normal).cv_results_["mean_test_score"],
                                  scores)
    np.testing.assert_allclose(path.fit(10.0 * normal).cv_results_["mean_test_score"],
                               scores, atol=1e-12)
    labels = np.ones(len(normal))
    with pytest.warns(UserWarning, match="y is ignored"):
        path.fit(normal, labels)
    np.testing.assert_array_equal(path.cv_results_["mean_test_score"], scores)


def test_torch_input_is_fitted_and_scored_in_torch(rng):
    torch = pytest.importorskip("torch")
    X, y = _patch_sets(rng)
    path = CRDetectorCV(lams=LAMS, cv=4, label_convention="outlier")
    scores = path.fit(torch.from_numpy(X), y).score_samples(torch.from_numpy(X))
    assert isinstance(scores, torch.Tensor)
    np.testing.assert_allclose(scores.numpy(), path.fit(X, y).score_samples(X))


def test_inflate_variance_doubles_the_covariance(rng):
    scale = np.array([3.0, 1.0, 0.1])
    rows = (rng.normal(size=(40_000, 3)) * scale)[:, np.newaxis, :]
    inflated = inflate_variance(rows, np.random.RandomState(0))[:, 0, :]
    np.testing.assert_allclose(np.cov((inflated / scale).T), 2 * np.eye(3), atol=0.05)
    patches = rng.normal(size=(20, 9, 4))
    changed = np.any(inflate_variance(patches, np.random.RandomState(0)) != patches,
                     axis=2)
    np.testing.assert_array_equal(changed.sum(axis=1), 1)


def test_folds_with_anomalies_in_training_are_refused(wbc_scaled):
    X, y = wbc_scaled
    with pytest.raises(ValueError, match="exactly the normal samples"):
        CRDetectorCV(cv=KFold(5), label_convention="outlier").fit(X, y)


@pytest.mark.parametrize("lams", [[], [0.0, 1.0], [[1.0, 2.0]], [1.0, np.inf]])
def test_bad_lams_raise(lams):
    with pytest.raises(ValueError, match="lams must be"):
        CRDetectorCV(lams=lams).fit(np.ones((10, 2)))


def test_synthetic_anomalies_must_match_x(rng):
    X = rng.normal(size=(20, 4))
    with pytest.raises(ValueError, match="shaped like X"):
        CRDetectorCV().fit(X, X_synthetic=rng.normal(size=(2, 3, 3, 4)))
    with pytest.raises(ValueError, match="features"):
        CRDetectorCV().fit(X, X_synthetic=rng.normal(size=(2, 5)))


def test_public_names():
    public = sorted(name for name in vars(model_selection)
                    if name.isidentifier() and not name.startswith("_"))
    assert sorted(model_selection.__all__) == public
    assert public == [
        "CRDetectorCV", "DEFECT_KINDS", "FAINT_DEFECTS", "NoveltyKFold",
        "anomaly_auroc", "default_candidates", "defect_training_set", "foreground",
        "patch_masks", "perlin_noise", "rank_detectors", "read_image",
        "select_pipeline", "synthesize_defects", "synthetic_holdout",
    ]
