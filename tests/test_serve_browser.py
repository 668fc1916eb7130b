"""The operator's page of ``crdistance serve`` in a real headless Chromium
(selenium) against a real server process and a model fitted by the real CLI on
magnetic_tile: verdicts, scores and overlays of a defective and a good image,
the API-key flow, the server's error message, and no Content-Security-Policy
violation or console error.

Skipped when selenium, chromium or chromedriver is missing, except under
``CI=true``, where a missing browser fails.
"""

import importlib.util
import json
import math
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from _servers import ROOT, get, multipart, post, serve_process

try:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys
    from selenium.webdriver.support.ui import WebDriverWait
except ImportError:  # skipped (or failed, under CI=true) by the fixture
    webdriver = None

pytestmark = pytest.mark.slow

KEY = "operator-key-42"
N_TRAIN = 30
ARTIFACTS = ROOT / "tests" / "artifacts"
WAIT_S = 60


def need(condition, reason):
    """Skip with `reason` unless `condition`; under CI=true, fail instead."""
    if condition:
        return
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: the browser tests must run)")
    pytest.skip(reason)


def executable(name):
    path = shutil.which(name) or f"/usr/bin/{name}"
    return path if os.access(path, os.X_OK) else None


@pytest.fixture(scope="module")
def browser_tools():
    """(chromium, chromedriver) paths, once selenium and the serve extra are
    known to be there."""
    need(webdriver is not None, "selenium is not installed (the test extra)")
    chromium, chromedriver = executable("chromium"), executable("chromedriver")
    need(chromium is not None, "no chromium browser (apt-get install chromium)")
    need(chromedriver is not None, "no chromedriver (apt-get install chromium-driver)")
    for module in ("starlette", "uvicorn", "python_multipart"):
        need(importlib.util.find_spec(module) is not None,
             f"{module} is not installed (the serve extra)")
    return chromium, chromedriver


@pytest.fixture(scope="module")
def model_file(browser_tools, shared_data, shared_weights, tmp_path_factory):
    """`crdistance fit` on the first 30 magnetic_tile train/good images."""
    root = tmp_path_factory.mktemp("browser")
    good = root / "good"
    good.mkdir()
    train = sorted((shared_data / "magnetic_tile/train/good").glob("*.jpg"))
    for path in train[:N_TRAIN]:
        shutil.copy(path, good / path.name)
    model = root / "magnetic_tile.npz"
    fit = subprocess.run(
        [sys.executable, "-m", "crdistance", "fit", str(good), "-o", str(model), "-q"],
        cwd=ROOT, env={**os.environ, "TORCH_HOME": str(shared_weights)},
        capture_output=True, text=True, timeout=300)
    assert fit.returncode == 0, fit.stdout + fit.stderr
    return model


@pytest.fixture(scope="module")
def server(model_file, shared_weights):
    with serve_process(model_file, env={"TORCH_HOME": str(shared_weights)}) as (url, _):
        yield url


def predict(url, paths, headers=None):
    body, kind = multipart([("file", Path(p).name, Path(p).read_bytes())
                            for p in paths])
    return post(f"{url}/predict", body, kind, headers=headers)


@pytest.fixture(scope="module")
def samples(server, shared_data):
    """(defect path, good path, {name: API result}): the highest-scoring of 64
    crack and blowhole images, the lowest-scoring of 8 good ones."""
    test = shared_data / "magnetic_tile/test"
    results = {}
    for kind, n in [("crack", 32), ("blowhole", 32), ("good", 8)]:
        paths = sorted((test / kind).glob("*.jpg"))[:n]
        status, answer = predict(server, paths)
        assert status == 200, answer
        for path, result in zip(paths, answer["results"], strict=True):
            assert result["filename"] == path.name
            results[path] = result | {"kind": kind}
    defect = max((p for p in results if results[p]["kind"] != "good"),
                 key=lambda p: results[p]["score"])
    good = min((p for p in results if results[p]["kind"] == "good"),
               key=lambda p: results[p]["score"])
    assert results[defect]["is_anomaly"], results[defect]
    assert results[defect]["score"] > results[defect]["threshold"]
    assert not results[good]["is_anomaly"], results[good]
    assert results[good]["score"] <= results[good]["threshold"]
    return defect, good, {p.name: r for p, r in results.items()}


@pytest.fixture
def browser(browser_tools):
    chromium, chromedriver = browser_tools
    options = webdriver.ChromeOptions()
    options.binary_location = chromium
    for argument in ("--headless=new", "--no-sandbox", "--disable-gpu",
                     "--disable-dev-shm-usage", "--window-size=1280,1000"):
        options.add_argument(argument)
    options.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(chromedriver))
    driver.set_page_load_timeout(WAIT_S)
    try:
        yield driver
    finally:
        driver.quit()


def wait(driver, condition, what):
    return WebDriverWait(driver, WAIT_S, poll_frequency=0.1).until(
        condition, message=f"waited {WAIT_S} s for {what}")


def open_page(driver, url):
    """Load the page (checking it is served under the CSP) and wait for /info."""
    status, headers, _ = get(f"{url}/")
    assert status == 200
    assert "default-src 'none'" in headers["content-security-policy"]
    driver.get(f"{url}/")
    assert driver.title == "crdistance inspection"
    wait(driver,
         lambda d: d.find_element(By.ID, "model-info").text != "Connecting to the "
         "model server\u2026", "the page's call to /info")


def error_text(driver):
    return driver.find_element(By.ID, "error").text.strip()


def upload(driver, path, n_cards):
    """Choose `path` in the file input; wait for the `n_cards`-th card (or an
    error, which fails) and return the cards, newest first."""
    driver.find_element(By.ID, "file-input").send_keys(str(path))
    wait(driver,
         lambda d: len(d.find_elements(By.CSS_SELECTOR, ".result")) >= n_cards
         or error_text(d), f"the result card of {Path(path).name}")
    assert not error_text(driver)
    return driver.find_elements(By.CSS_SELECTOR, ".result")


def check_card(driver, card, result):
    verdict = card.find_element(By.CSS_SELECTOR, ".verdict")
    assert verdict.text == ("DEFECT" if result["is_anomaly"] else "OK")
    assert verdict.is_displayed()
    assert result["filename"] in card.text
    shown = card.find_element(By.CSS_SELECTOR, ".score").text
    assert float(shown) == float(f"{result['score']:.4g}"), (shown, result["score"])
    threshold = card.find_element(By.CSS_SELECTOR, ".threshold").text
    assert math.isclose(float(threshold), result["threshold"], rel_tol=1e-3)
    p_value = card.find_element(By.CSS_SELECTOR, ".p-value").text
    if result["p_value"] is None:
        assert p_value == "n/a"
    else:
        assert math.isclose(float(p_value), result["p_value"], rel_tol=1e-3)
    image = card.find_element(By.CSS_SELECTOR, "img.overlay")
    assert image.get_attribute("src").startswith("data:image/png;base64,")
    width = wait(driver, lambda d: d.execute_script(
        "return arguments[0].complete && arguments[0].naturalWidth", image),
        "the overlay to decode")
    assert width > 0
    if max(result["width"], result["height"]) <= 1024:
        assert width == result["width"]
    assert image.is_displayed()


def console_problems(driver, allowed_statuses=()):
    """Console lines that are CSP violations or SEVERE errors, but for the
    failed-resource lines of the HTTP statuses a test provokes on purpose."""
    problems = []
    for entry in driver.get_log("browser"):
        message = entry["message"]
        expected = any(f"status of {status} " in message for status in allowed_statuses)
        if ("Content Security Policy" in message or "Refused to" in message
                or "violates" in message
                or (entry["level"] == "SEVERE" and not expected)):
            problems.append(message)
    return problems


def screenshot(driver, *paths):
    for path in paths:
        path.parent.mkdir(parents=True, exist_ok=True)
        assert driver.save_screenshot(str(path))


def test_verdicts_scores_and_overlays(browser, server, samples, tmp_path):
    defect, good, results = samples
    start = time.perf_counter()
    open_page(browser, server)
    info = json.loads(get(f"{server}/info")[2])
    assert info["model"] == "magnetic_tile"
    assert browser.find_element(By.ID, "model-name").text == info["model"]
    assert browser.find_element(By.ID, "model-version").text == info["version"]
    assert float(browser.find_element(By.ID, "model-threshold").text) == float(
        f"{info['threshold']:.4g}")
    calibrated = info["false_alarm_rate"] is not None
    header = browser.find_element(By.ID, "model-info").text
    assert ("calibrated" if calibrated else "uncalibrated") in header
    assert browser.find_element(By.ID, "false-alarm-rate").is_displayed() == calibrated
    assert browser.find_element(By.ID, "api-key").is_displayed() is False
    assert browser.find_element(By.ID, "file-input").is_enabled()

    cards = upload(browser, defect, 1)
    check_card(browser, cards[0], results[defect.name])
    cards = upload(browser, good, 2)
    assert len(cards) == 2  # newest first
    check_card(browser, cards[0], results[good.name])
    check_card(browser, cards[1], results[defect.name])
    assert cards[0].find_element(By.CSS_SELECTOR, ".verdict").text == "OK"
    assert cards[1].find_element(By.CSS_SELECTOR, ".verdict").text == "DEFECT"
    assert "2 inspected" in browser.find_element(By.ID, "tally").text
    assert browser.find_element(By.ID, "results").get_attribute("aria-live") == "polite"
    assert browser.find_element(By.ID, "error").get_attribute("role") == "alert"
    screenshot(browser, tmp_path / "serve_page.png", ARTIFACTS / "serve_page.png")
    assert console_problems(browser) == []
    assert time.perf_counter() - start < WAIT_S


def test_api_key_field_after_401(browser, model_file, shared_weights, samples,
                                 tmp_path):
    _, good, results = samples
    with serve_process(model_file, "--api-key", KEY,
                       env={"TORCH_HOME": str(shared_weights)}) as (url, _):
        open_page(browser, url)
        field = browser.find_element(By.ID, "api-key")
        assert field.get_attribute("type") == "password"
        assert field.is_displayed()
        assert "API key" in error_text(browser)
        assert browser.find_elements(By.ID, "model-name") == []

        field.send_keys("wrong-key", Keys.RETURN)  # refused: the field stays
        wait(browser, lambda d: d.execute_script(
            "return sessionStorage.getItem('crdistance-api-key')") == "wrong-key",
            "the wrong key to be tried")
        wait(browser,
             lambda d: "API key" in error_text(d), "the 401 again")
        assert field.is_displayed()
        field.clear()
        field.send_keys(KEY, Keys.RETURN)
        wait(browser, lambda d: d.find_elements(By.ID, "model-name"),
             "/info with the key")
        assert not field.is_displayed()
        assert not error_text(browser)
        assert browser.execute_script(
            "return sessionStorage.getItem('crdistance-api-key')") == KEY

        cards = upload(browser, good, 1)
        check_card(browser, cards[0], results[good.name])
        browser.refresh()  # the key outlives a reload of the tab
        wait(browser, lambda d: d.find_elements(By.ID, "model-name"),
             "/info after a reload")
        assert not browser.find_element(By.ID, "api-key").is_displayed()
        screenshot(browser, tmp_path / "serve_page_key.png")
        assert console_problems(browser, allowed_statuses=[401]) == []


def test_server_error_message_is_shown(browser, server, samples, tmp_path):
    _, good, results = samples
    notes = tmp_path / "notes.txt"
    notes.write_text("not an image, just some text\n")
    status, answer = predict(server, [notes])
    assert status == 415, answer
    message = answer["error"]["message"]
    assert "notes.txt" in message

    open_page(browser, server)
    browser.find_element(By.ID, "file-input").send_keys(str(notes))
    wait(browser, lambda d: error_text(d),
         "the error message")
    shown = error_text(browser)
    assert message in shown and "415" in shown
    assert browser.find_element(By.ID, "error").is_displayed()
    assert browser.find_elements(By.CSS_SELECTOR, ".result") == []
    screenshot(browser, tmp_path / "serve_page_error.png")

    cards = upload(browser, good, 1)  # the next upload clears it
    check_card(browser, cards[0], results[good.name])
    assert not browser.find_element(By.ID, "error").is_displayed()
    assert console_problems(browser, allowed_statuses=[415]) == []
