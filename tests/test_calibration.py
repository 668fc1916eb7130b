"""Split conformal calibration: the threshold's guarantee, p-values, the
per-category (Mondrian) version, persistence in the safe model file, and
``crdistance fit --false-alarm-rate``."""

import math

import numpy as np
import pytest
from _model_files import assert_refused, replace_array, rewrite
from scipy.stats import binom
from sklearn.ensemble import IsolationForest
from sklearn.exceptions import NotFittedError
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from crdistance import CRDetector, LocalCRDetector
from crdistance.calibration import (
    calibrate,
    conformal_p_values,
    conformal_threshold,
    p_values,
    smallest_false_alarm_rate,
    threshold_at,
)
from crdistance.categories import PerCategoryDetector
from crdistance.kmeans import KMeansDetector
from crdistance.persistence import load, save

D = 6


def gaussian(rng, n, scale=1.0, shift=0.0):
    """Normal samples on a 3-D plane of R^6 plus small noise off it."""
    basis = np.linalg.qr(rng.normal(size=(D, 3)))[0]
    return (shift + scale * rng.normal(size=(n, 3)) @ basis.T
            + 0.05 * rng.normal(size=(n, D)))


@pytest.fixture
def rng():
    return np.random.default_rng(0)


# -- the threshold and the p-values ------------------------------------------


@pytest.mark.parametrize("n, alpha", [(99, 0.01), (100, 0.05), (19, 0.05),
                                      (1000, 0.1), (7, 0.125)])
def test_threshold_is_the_conformal_order_statistic(rng, n, alpha):
    scores = np.sort(rng.exponential(size=n))
    k = math.ceil((n + 1) * (1 - alpha))
    assert conformal_threshold(scores, alpha) == scores[k - 1]


def test_the_smallest_rate_is_the_largest_score(rng):
    scores = np.sort(rng.exponential(size=9))
    assert smallest_false_alarm_rate(9) == 0.1
    assert conformal_threshold(scores, 0.1) == scores[-1]
    with pytest.raises(ValueError, match=r"needs at least 19 calibration samples; "
                       r"with 9, the smallest rate is 1/\(n\+1\) = 0.1"):
        conformal_threshold(scores, 0.05)


def test_false_alarm_rate_is_bounded_over_random_splits(rng):
    """Over 300 random fit / calibration / test splits the false-alarm rate
    averages alpha within its binomial interval, and never much above it."""
    alpha, n_cal, n_test, splits = 0.05, 99, 400, 300
    data = gaussian(rng, 200 + n_cal + n_test)
    rates = []
    for _ in range(splits):
        order = rng.permutation(len(data))
        fit, cal, test = np.split(data[order], [200, 200 + n_cal])
        detector = CRDetector(lam=1e-3).fit(fit).calibrate(
            cal, false_alarm_rate=alpha)
        rates.append(np.mean(detector.predict(test) == -1))
    # Exactly (n+1)(1-alpha) = 95 of 100 ranks: the rate is 1 - 95/100 = alpha.
    low, high = binom.interval(0.999, splits * n_test, alpha)
    assert low / (splits * n_test) <= np.mean(rates) <= high / (splits * n_test)


def test_the_auto_threshold_on_training_data_does_not_bound(rng):
    """The reason calibration exists: training distances are optimistic."""
    data = gaussian(rng, 2000)
    detector = CRDetector(lam=1e-3, contamination=0.05).fit(data[:40])
    assert np.mean(detector.predict(data[1000:]) == -1) > 0.1
    detector.calibrate(data[40:1000], false_alarm_rate=0.05)
    assert np.mean(detector.predict(data[1000:]) == -1) < 0.07


@pytest.mark.parametrize("make", [
    lambda: CRDetector(lam=1e-3),
    lambda: LocalCRDetector(n_cells=2, lam=1e-3, random_state=0),
    lambda: KMeansDetector(n_clusters=4, random_state=0),
])
def test_p_value_at_most_the_rate_exactly_when_predicted_outlier(rng, make):
    data = gaussian(rng, 700)
    detector = make().fit(data[:300]).calibrate(data[300:500], false_alarm_rate=0.05)
    queries = np.concatenate([data[500:], data[500:600] * 3, data[300:350]])
    p = detector.p_values(queries)
    assert p.dtype == np.float64 and np.all((p >= 1 / 201) & (p <= 1))
    np.testing.assert_array_equal(p <= 0.05, detector.predict(queries) == -1)
    # A calibration sample's own p-value counts itself: (1 + #above) / (n + 1).
    scores = detector.calibration_scores_
    expected = (1 + (len(scores) - np.searchsorted(scores, scores))) / 201
    np.testing.assert_allclose(
        conformal_p_values(scores, scores), expected)


def test_ties_keep_p_values_and_predict_equivalent():
    scores = np.array([0.0, 1.0, 1.0, 1.0, 2.0, 2.0, 3.0, 3.0, 3.0])
    for alpha in (0.1, 0.2, 0.3, 0.5):
        threshold = conformal_threshold(scores, alpha)
        queries = np.array([0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 3.5])
        np.testing.assert_array_equal(
            conformal_p_values(scores, queries) <= alpha, queries > threshold)


def test_threshold_at_other_rates_is_monotone(rng):
    data = gaussian(rng, 700)
    detector = CRDetector(lam=1e-3).fit(data[:300]).calibrate(data[300:],
                                                              false_alarm_rate=0.05)
    rates = [0.0025, 0.01, 0.05, 0.2, 0.5]
    thresholds = [detector.threshold_at(rate) for rate in rates]
    assert thresholds == sorted(thresholds, reverse=True)
    assert detector.threshold_at(0.05) == detector.threshold_
    with pytest.raises(ValueError, match="the smallest rate is"):
        detector.threshold_at(0.001)


@pytest.mark.parametrize("rate, error, match", [
    (0.0, ValueError, r"must lie in \(0, 1\)"),
    (1.0, ValueError, r"must lie in \(0, 1\)"),
    (float("nan"), ValueError, r"must lie in \(0, 1\)"),
    (-0.1, ValueError, r"must lie in \(0, 1\)"),
    (True, TypeError, "must be a number"),
    ("0.01", TypeError, "must be a number"),
])
def test_bad_rates_are_refused(rng, rate, error, match):
    data = gaussian(rng, 300)
    detector = CRDetector(lam=1e-3).fit(data[:100])
    with pytest.raises(error, match=match):
        detector.calibrate(data[100:], false_alarm_rate=rate)
    assert not hasattr(detector, "calibration_scores_")


def test_bad_calibration_sets_are_refused(rng):
    data = gaussian(rng, 300)
    detector = CRDetector(lam=1e-3).fit(data[:100])
    with pytest.raises(ValueError, match="needs at least 99 calibration samples"):
        detector.calibrate(data[100:150], false_alarm_rate=0.01)
    with pytest.raises(ValueError, match="NaN or infinite"):
        detector.calibrate_distances([1.0, np.inf, 2.0], false_alarm_rate=0.5)
    with pytest.raises(ValueError, match="negative"):
        detector.calibrate_distances([1.0, -2.0, 2.0], false_alarm_rate=0.5)
    with pytest.raises(ValueError, match=r"1-D\), got shape \(2, 2\)"):
        detector.calibrate_distances([[1.0, 2.0], [3.0, 4.0]], false_alarm_rate=0.5)
    with pytest.raises(ValueError, match="at least one held-out"):
        detector.calibrate_distances([], false_alarm_rate=0.5)
    with pytest.raises(ValueError, match="features"):
        detector.calibrate(data[100:, :4])
    with pytest.raises(NotFittedError, match="not calibrated"):
        detector.p_values(data[:3])
    with pytest.raises(NotFittedError, match="not calibrated"):
        detector.threshold_at(0.1)
    with pytest.raises(NotFittedError):
        CRDetector().calibrate(data)


def test_refitting_forgets_the_calibration(rng):
    data = gaussian(rng, 600)
    detector = CRDetector(lam=1e-3).fit(data[:300]).calibrate(data[300:])
    auto = CRDetector(lam=1e-3).fit(data[:300]).offset_
    detector.fit(data[:300])
    assert not hasattr(detector, "calibration_scores_")
    assert not hasattr(detector, "false_alarm_rate_")
    assert detector.offset_ == auto
    detector.calibrate(data[300:]).partial_fit(data[:10])
    assert not hasattr(detector, "calibration_scores_")
    with pytest.raises(NotFittedError, match="not calibrated"):
        detector.p_values(data[:2])


def test_patch_sets_are_calibrated_per_image(rng):
    images = gaussian(rng, 300 * 16).reshape(300, 4, 4, D)
    detector = CRDetector(lam=1e-3).fit(images[:100]).calibrate(
        images[100:200], false_alarm_rate=0.05)
    assert detector.calibration_scores_.shape == (100,)
    np.testing.assert_array_equal(detector.p_values(images[200:]) <= 0.05,
                                  detector.predict(images[200:]) == -1)


# -- pipelines and routed models -----------------------------------------------


def test_the_functions_take_a_pipeline(rng):
    data = gaussian(rng, 900) * np.arange(1, D + 1)
    model = make_pipeline(StandardScaler(), CRDetector(lam=1e-3)).fit(data[:300])
    assert calibrate(model, data[300:800], false_alarm_rate=0.02) is model
    expected = CRDetector(lam=1e-3).fit(model[0].transform(data[:300])).calibrate(
        model[0].transform(data[300:800]), false_alarm_rate=0.02)
    np.testing.assert_allclose(model[-1].calibration_scores_,
                               expected.calibration_scores_)
    np.testing.assert_allclose(p_values(model, data[800:]),
                               expected.p_values(model[0].transform(data[800:])))
    assert threshold_at(model, 0.02) == model[-1].threshold_


def test_the_functions_refuse_other_detectors(rng):
    data = gaussian(rng, 300)
    forest = IsolationForest(random_state=0).fit(data)
    with pytest.raises(TypeError, match="IsolationForest cannot be calibrated"):
        calibrate(forest, data)
    with pytest.raises(TypeError, match="cannot be calibrated"):
        calibrate(make_pipeline(StandardScaler(), forest).fit(data), data)
    detector = CRDetector(lam=1e-3).fit(data[:100])
    with pytest.raises(TypeError, match="takes no category labels"):
        calibrate(detector, data[100:], ["a"] * 200)


def two_products(rng, n):
    """Category 'small' of scale 1 and 'large' of scale 10, off each other."""
    small, large = gaussian(rng, n), gaussian(rng, n, scale=10.0, shift=50.0)
    return small, large


def test_mondrian_calibration_bounds_every_category(rng):
    small, large = two_products(rng, 3000)
    fit = np.concatenate([small[:200], large[:200]])
    y = ["small"] * 200 + ["large"] * 200
    model = PerCategoryDetector(CRDetector(lam=1e-3, lam_scale="trace")).fit(fit, y)
    model.calibrate(np.concatenate([small[200:1200], large[200:1200]]),
                    ["small"] * 1000 + ["large"] * 1000, false_alarm_rate=0.05)
    assert model.false_alarm_rate_ == 0.05 and model.threshold_ == 1.0
    for part in (small[1200:], large[1200:]):
        rate = np.mean(model.predict(part) == -1)
        assert 0.02 < rate < 0.08
        np.testing.assert_array_equal(model.p_values(part) <= 0.05,
                                      model.predict(part) == -1)
    at = model.threshold_at(0.05)
    assert set(at) == {"small", "large"}
    assert at["small"] == pytest.approx(1.0) and at["large"] == pytest.approx(1.0)
    assert all(value > 1 for value in model.threshold_at(0.01).values())
    # Routed instead of labelled: the same categories, the same thresholds.
    routed = PerCategoryDetector(CRDetector(lam=1e-3, lam_scale="trace")).fit(fit, y)
    routed.calibrate(np.concatenate([small[200:1200], large[200:1200]]),
                     false_alarm_rate=0.05)
    for ours, theirs in zip(routed.detectors_, model.detectors_, strict=True):
        assert ours.offset_ == theirs.offset_


def test_mondrian_calibration_is_all_or_nothing(rng):
    small, large = two_products(rng, 400)
    fit = np.concatenate([small[:200], large[:200]])
    model = PerCategoryDetector().fit(fit, ["small"] * 200 + ["large"] * 200)
    before = [detector.offset_ for detector in model.detectors_]
    # 'large' (the first category) calibrates, then 'small' fails.
    held = np.concatenate([large[200:400], small[200:230]])
    labels = ["large"] * 200 + ["small"] * 30
    with pytest.raises(ValueError, match="category 'small': false_alarm_rate=0.01 "
                       "needs at least 99"):
        model.calibrate(held, labels, false_alarm_rate=0.01)
    with pytest.raises(ValueError, match=r"no samples of the categories \['small'\]"):
        model.calibrate(large[200:400], ["large"] * 200, false_alarm_rate=0.05)
    with pytest.raises(ValueError, match=r"categories \['bolt'\] that were not fitted"):
        model.calibrate(held, ["bolt"] * 230, false_alarm_rate=0.05)
    assert [detector.offset_ for detector in model.detectors_] == before
    assert not hasattr(model, "false_alarm_rate_")
    assert all(not hasattr(detector, "calibration_scores_")
               for detector in model.detectors_)
    model.calibrate(held, labels, false_alarm_rate=0.05)
    assert model.false_alarm_rate_ == 0.05
    model.fit(fit, ["small"] * 200 + ["large"] * 200)
    assert not hasattr(model, "false_alarm_rate_")


# -- the model file ----------------------------------------------------------------


@pytest.fixture
def calibrated_path(tmp_path, rng):
    data = gaussian(rng, 600)
    detector = CRDetector(lam=1e-3).fit(data[:300]).calibrate(data[300:],
                                                              false_alarm_rate=0.05)
    path = tmp_path / "model.npz"
    save(detector, path)
    return path, detector, data


def test_calibration_survives_the_model_file(calibrated_path, tmp_path):
    path, detector, data = calibrated_path
    loaded = load(path)
    assert loaded.false_alarm_rate_ == 0.05
    np.testing.assert_array_equal(loaded.calibration_scores_,
                                  detector.calibration_scores_)
    np.testing.assert_array_equal(loaded.p_values(data), detector.p_values(data))
    assert loaded.threshold_at(0.01) == detector.threshold_at(0.01)
    uncalibrated = tmp_path / "plain.npz"
    save(CRDetector(lam=1e-3).fit(data[:300]), uncalibrated)
    assert not hasattr(load(uncalibrated), "calibration_scores_")


def fitted(**changes):
    def edit(header, arrays):
        header["steps"][0]["fitted"].update(changes)
    return edit


def drop(key):
    def edit(header, arrays):
        del header["steps"][0]["fitted"][key]
    return edit


def scores(change):
    def edit(header, arrays):
        name = "crdetector.calibration_scores_"
        replace_array(header, arrays, name, change(arrays[name].copy()))
    return edit


def _swap_ends(values):
    values[0], values[-1] = values[-1], values[0]
    return values


@pytest.mark.parametrize("edit, match", [
    (fitted(offset_=-1e9), r"has the threshold 1000000000.0 \(-offset_\), but its "
     "calibration scores give"),
    (fitted(false_alarm_rate_=0.2), "calibration scores give"),
    (fitted(false_alarm_rate_=1.5), r"false_alarm_rate_=1.5 is not in \(0, 1\)"),
    (fitted(false_alarm_rate_=1e-4), "below 1 / \\(n \\+ 1\\)"),
    (fitted(false_alarm_rate_="0.05"), "false_alarm_rate_ must be a finite number"),
    (fitted(n_calibration_=10), r"shape \(300,\), but n_calibration_=10 gives"),
    (fitted(n_calibration_=0), "n_calibration_ must be an int >= 1"),
    (drop("n_calibration_"), "has false_alarm_rate_ but no n_calibration_"),
    (drop("false_alarm_rate_"), "has n_calibration_ but no false_alarm_rate_"),
    (scores(_swap_ends), "increasing order"),
    (scores(lambda values: values - values.max()), "increasing order|>= 0"),
    (scores(lambda values: np.where(values > values[150], np.nan, values)),
     "NaN or infinity"),
])
def test_tampered_calibrations_are_refused(calibrated_path, edit, match):
    path, _, _ = calibrated_path
    assert_refused(path, edit, match)


def test_a_calibration_array_without_its_fields_is_refused(calibrated_path):
    path, _, _ = calibrated_path
    rewrite(path, lambda header, arrays: [
        header["steps"][0]["fitted"].pop(key)
        for key in ("n_calibration_", "false_alarm_rate_")])
    with pytest.raises(ValueError, match="calibration_scores_"):
        load(path)


@pytest.fixture
def routed_path(tmp_path, rng):
    small, large = two_products(rng, 400)
    fit = np.concatenate([small[:200], large[:200]])
    model = PerCategoryDetector().fit(fit, ["small"] * 200 + ["large"] * 200)
    model.calibrate(np.concatenate([small[200:], large[200:]]),
                    ["small"] * 200 + ["large"] * 200, false_alarm_rate=0.05)
    path = tmp_path / "routed.npz"
    save(model, path)
    return path, model, np.concatenate([small, large])


def test_routed_calibration_survives_the_model_file(routed_path):
    path, model, data = routed_path
    loaded = load(path)
    assert loaded.false_alarm_rate_ == 0.05
    np.testing.assert_array_equal(loaded.p_values(data), model.p_values(data))
    assert loaded.threshold_at(0.01) == model.threshold_at(0.01)


def sub_fitted(index, **changes):
    def edit(header, arrays):
        header["steps"][0]["fitted"]["detectors_"][index]["fitted"].update(changes)
    return edit


@pytest.mark.parametrize("edit, match", [
    (fitted(false_alarm_rate_=0.1), "its detector 0 is calibrated at 0.05"),
    (drop("false_alarm_rate_"), "has calibrated detectors but no false_alarm_rate_"),
    (fitted(n_calibration_=3), "its detectors hold the counts"),
    (sub_fitted(1, offset_=-123.0), "calibration scores give"),
])
def test_tampered_routed_calibrations_are_refused(routed_path, edit, match):
    path, _, _ = routed_path
    assert_refused(path, edit, match)


# -- crdistance fit --false-alarm-rate and predict's p-values ------------------------


@pytest.fixture(scope="module")
def good_images(tmp_path_factory):
    pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    from crdistance.cli._demo_data import write_demo_dataset

    root = tmp_path_factory.mktemp("calibration_images")
    write_demo_dataset(root, n_train=12, n_test_good=4, n_defective=4, size=64)
    return root


FAST = ["--weights", "none", "--resize", "64", "--batch-size", "4"]


def run_cli(capsys, *args):
    import json

    from crdistance.cli import main

    code = main([str(arg) for arg in args])
    captured = capsys.readouterr()
    return code, (json.loads(captured.out) if "--json" in args and code == 0
                  else captured.out), captured.err


def test_fit_calibrates_at_the_requested_rate(good_images, tmp_path, capsys):
    model = tmp_path / "model.npz"
    code, payload, err = run_cli(
        capsys, "fit", good_images / "train" / "good", "-o", model, "--json",
        "--calibration", "0.5", "--false-alarm-rate", "0.3", *FAST)
    assert code == 0, err
    assert payload["false_alarm_rate"] == payload["false_alarm_rate_requested"] == 0.3
    assert payload["threshold_rule"] == ("conformal threshold at false-alarm rate 0.3 "
                                         "of 6 held-out good images")
    detector = load(model)[-1]
    assert detector.false_alarm_rate_ == 0.3
    assert len(detector.calibration_scores_) == 6
    # ceil(7 * 0.7) = 5: the 5th smallest of the 6 held-out scores.
    assert detector.threshold_ == detector.calibration_scores_[4]
    assert payload["threshold"] == detector.threshold_
    images = sorted((good_images / "test").rglob("*.png"))
    code, result, err = run_cli(capsys, "predict", model, *images, "-o",
                                tmp_path / "out", "--json")
    assert code == 0, err
    assert result["false_alarm_rate"] == 0.3
    for row in result["images"]:
        assert 1 / 7 <= row["p_value"] <= 1
        assert (row["p_value"] <= 0.3) == (row["decision"] == "anomalous")


def test_fit_with_too_few_held_out_images_warns_and_uses_them_all(
        good_images, tmp_path, capsys):
    model = tmp_path / "model.npz"
    code, payload, err = run_cli(
        capsys, "fit", good_images / "train" / "good", "-o", model, "--json",
        "--calibration", "0.25", *FAST)
    assert code == 0, err
    assert "3 held-out good images allow no false-alarm rate below 1/4 = 0.25" in err
    assert "--false-alarm-rate 0.01 needs 99" in err
    assert (payload["false_alarm_rate"], payload["false_alarm_rate_requested"]) == (
        0.25, 0.01)
    detector = load(model)[-1]
    assert detector.threshold_ == detector.calibration_scores_[-1]


@pytest.mark.slow  # ~6 s
def test_fit_without_held_out_images_is_not_calibrated(good_images, tmp_path,
                                                       capsys):
    model = tmp_path / "model.npz"
    code, payload, err = run_cli(capsys, "fit", good_images / "train" / "good", "-o",
                                 model, "--json", "--calibration", "0", *FAST)
    assert code == 0, err
    assert payload["false_alarm_rate"] is None
    assert not hasattr(load(model)[-1], "calibration_scores_")
    images = sorted((good_images / "test").rglob("*.png"))[:2]
    code, result, err = run_cli(capsys, "predict", model, *images, "-o",
                                tmp_path / "out", "--json")
    assert code == 0, err
    assert [row["p_value"] for row in result["images"]] == [None, None]


@pytest.mark.parametrize("rate", ["0", "1", "nan", "-0.5", "x"])
def test_fit_refuses_a_bad_rate_in_one_line(good_images, tmp_path, capsys, rate):
    from crdistance.cli import main

    with pytest.raises(SystemExit) as exit_:
        main(["fit", str(good_images / "train" / "good"), "-o",
              str(tmp_path / "m.npz"), "--false-alarm-rate", rate, *FAST])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "--false-alarm-rate" in err and "Traceback" not in err
    assert not (tmp_path / "m.npz").exists()
