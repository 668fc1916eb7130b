"""The server's application in process (Starlette's TestClient): routes,
answers equal to the offline pipeline's, the API key, limits and hostile
requests, metrics, micro-batching, timeouts and the atomic reload."""

import asyncio
import base64
import io
import shutil
import struct
import time
import zlib

import numpy as np
import pytest

pytest.importorskip("starlette")
pytest.importorskip("httpx")

from PIL import Image  # noqa: E402
from sklearn.pipeline import make_pipeline  # noqa: E402

from crdistance import CRDetector, PatchFeaturizer  # noqa: E402
from crdistance.persistence import save  # noqa: E402
from crdistance.serve import ServeConfig, create_app  # noqa: E402
from crdistance.serve._batching import MicroBatcher, QueueFull  # noqa: E402

KEY = "s3cret-key"
AUTH = {"Authorization": f"Bearer {KEY}"}


def texture(rng, defect=False):
    image = rng.integers(90, 110, (64, 64, 3), dtype=np.uint8)
    if defect:
        image[20:32, 24:36] = 250
    return image


def png(image):
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def fitted():
    """A small image pipeline (random weights: no download) and its file."""
    rng = np.random.default_rng(0)
    pipeline = make_pipeline(
        PatchFeaturizer(backbone="mobilenet_v2", weights=None, resize=64,
                        progress=False),
        CRDetector(lam=0.01, lam_scale="trace"))
    pipeline.fit([texture(rng) for _ in range(8)])
    return pipeline, rng


@pytest.fixture(scope="module")
def model_file(fitted, tmp_path_factory):
    path = tmp_path_factory.mktemp("serve") / "parts.npz"
    save(fitted[0], path)
    return path


@pytest.fixture
def client(model_file):
    from starlette.testclient import TestClient

    app = create_app(model_file, ServeConfig(api_key=KEY, max_upload_bytes=2**20,
                                             max_pixels=512 * 512, max_images=4))
    with TestClient(app) as test_client:
        yield test_client


def files(*images):
    return [("file", (f"image{i}.png", png(image), "image/png"))
            for i, image in enumerate(images)]


def assert_error(response, status, words):
    assert response.status_code == status, response.text
    message = response.json()["error"]["message"]
    assert response.json()["error"]["status"] == status
    assert words in message, message


def test_health_and_metadata_routes(client):
    assert client.get("/v2/health/live").json() == {"live": True}
    assert client.get("/v2/health/ready").status_code == 200
    assert client.get("/v2", headers=AUTH).json()["name"] == "crdistance"
    meta = client.get("/v2/models/parts", headers=AUTH).json()
    assert meta["name"] == "parts" and len(meta["versions"][0]) == 12
    assert {t["name"] for t in meta["inputs"]} == {"images", "features"}
    assert meta["inputs"][1]["shape"] == [-1, 8, 8, 128]
    assert client.get("/v2/models/parts/ready", headers=AUTH).json()["ready"]
    assert_error(client.get("/v2/models/other", headers=AUTH), 404, "'parts'")
    assert_error(client.get("/nowhere", headers=AUTH), 404, "/nowhere")
    assert_error(client.delete("/predict", headers=AUTH), 405, "DELETE")


def test_predict_equals_the_offline_pipeline(client, fitted):
    pipeline, _ = fitted
    rng = np.random.default_rng(5)
    good, bad = texture(rng), texture(rng, defect=True)
    response = client.post("/predict", headers=AUTH, files=files(good, bad),
                           data={"overlay": "true"})
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    expected = -pipeline.score_samples([good, bad])
    threshold = pipeline[-1].threshold_
    assert [r["filename"] for r in results] == ["image0.png", "image1.png"]
    for result, score in zip(results, expected, strict=True):
        assert result["score"] == pytest.approx(score, rel=1e-9)
        assert result["is_anomaly"] == (score > threshold)
        assert result["threshold"] == pytest.approx(threshold)
        assert (result["width"], result["height"]) == (64, 64)
        picture = Image.open(io.BytesIO(base64.b64decode(result["overlay_png"])))
        assert picture.format == "PNG" and picture.size == (64, 64)
    assert results[1]["is_anomaly"] and results[1]["score"] > results[0]["score"]
    # Without overlay=true no picture is sent.
    plain = client.post("/predict", headers=AUTH, files=files(good)).json()
    assert "overlay_png" not in plain["results"][0]


def test_threshold_override_decides(client, fitted):
    rng = np.random.default_rng(6)
    bad = texture(rng, defect=True)
    score = client.post("/predict", headers=AUTH,
                        files=files(bad)).json()["results"][0]["score"]
    for threshold, anomalous in [(score * 2, False), (score / 2, True)]:
        result = client.post("/predict", headers=AUTH, files=files(bad),
                             data={"threshold": str(threshold)}).json()["results"][0]
        assert result["is_anomaly"] is anomalous
        assert result["threshold"] == pytest.approx(threshold)
        assert result["false_alarm_rate"] is None
    # In the query string too.
    result = client.post(f"/predict?threshold={score * 2}", headers=AUTH,
                         files=files(bad)).json()["results"][0]
    assert result["is_anomaly"] is False


def test_false_alarm_rate_needs_calibration(client, fitted):
    response = client.post("/predict", headers=AUTH, files=files(texture(fitted[1])),
                           data={"false_alarm_rate": "0.05"})
    assert_error(response, 422, "calibration")


def test_infer_images_and_features(client, fitted):
    pipeline, _ = fitted
    rng = np.random.default_rng(7)
    images = np.stack([texture(rng), texture(rng, defect=True)])
    body = {"id": "r1", "inputs": [{"name": "images", "datatype": "UINT8",
                                    "shape": list(images.shape),
                                    "data": images.ravel().tolist()}]}
    answer = client.post("/v2/models/parts/infer", headers=AUTH, json=body).json()
    assert answer["id"] == "r1" and answer["model_name"] == "parts"
    outputs = {output["name"]: output for output in answer["outputs"]}
    expected = -pipeline.score_samples(list(images))
    np.testing.assert_allclose(outputs["score"]["data"], expected, rtol=1e-9)
    assert outputs["is_anomaly"]["data"][1] is True
    # Features: the featurizer's output scored by the detector alone.
    features = pipeline[0].transform(list(images))
    body = {"inputs": [{"name": "features", "datatype": "FP32",
                        "shape": list(features.shape),
                        "data": features.ravel().tolist()}]}
    answer = client.post("/v2/models/parts/infer", headers=AUTH, json=body).json()
    np.testing.assert_allclose(answer["outputs"][0]["data"], expected, rtol=1e-5)


@pytest.mark.parametrize("tensor, words", [
    ({"name": "features", "datatype": "FP32", "shape": [1, 4, 4, 128],
      "data": [0.0] * 2048}, "shape (n, 8, 8, 128)"),
    ({"name": "images", "datatype": "FP32", "shape": [1, 8, 8, 3],
      "data": [0] * 192}, "datatype UINT8"),
    ({"name": "images", "datatype": "UINT8", "shape": [1, 8, 8, 3],
      "data": [0] * 10}, "needs 192"),
    ({"name": "images", "datatype": "UINT8", "shape": [1, 8, 8, 3],
      "data": [300] * 192}, "0 to 255"),
    ({"name": "images", "datatype": "UINT8", "shape": [1, 8, 8, 5],
      "data": [0] * 320}, "1 or 3"),
    ({"name": "images", "datatype": "UINT8", "shape": [1, 1000, 1000, 3],
      "data": []}, "limit of 262,144 pixels"),
    ({"name": "images", "datatype": "UINT8", "shape": [9, 2, 2, 3],
      "data": [0] * 108}, "limit of 4 per request"),
    ({"name": "tensor", "datatype": "UINT8", "shape": [1], "data": [0]}, "input name"),
    ({"name": "images", "datatype": "UINT8", "shape": [1, -8, 8],
      "data": []}, "positive integers"),
    ({"name": "features", "datatype": "FP32", "shape": [1, 8, 8, 128],
      "data": ["x"] * 8192}, "numbers only"),
])
def test_infer_refuses_bad_tensors(client, tensor, words):
    response = client.post("/v2/models/parts/infer", headers=AUTH,
                           json={"inputs": [tensor]})
    assert_error(response, response.status_code, words)
    assert response.status_code in (413, 422)


def test_infer_refuses_bad_bodies(client):
    url = "/v2/models/parts/infer"
    assert_error(client.post(url, headers=AUTH, content=b"{not json",
                             ), 400, "not valid JSON")
    assert_error(client.post(url, headers=AUTH | {"Content-Type": "text/plain"},
                             content=b"{}"), 415, "application/json")
    assert_error(client.post(url, headers=AUTH, json={"inputs": []}), 422,
                 "exactly 1 input")
    assert_error(client.post(url, headers=AUTH, json=[1, 2]), 422, '"inputs" list')


def test_api_key(client):
    assert client.get("/").status_code == 200  # the page carries no data
    assert client.get("/v2/health/ready").status_code == 200  # probes
    for headers in [{}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"},
                    {"Authorization": KEY}, {"X-API-Key": KEY[:-1]}]:
        response = client.get("/info", headers=headers)
        assert_error(response, 401, "API key")
        assert response.headers["WWW-Authenticate"] == "Bearer"
        assert client.get("/metrics", headers=headers).status_code == 401
        assert client.post("/predict", headers=headers).status_code == 401
    assert client.get("/info", headers={"X-API-Key": KEY}).json()["auth"] is True
    assert client.get("/info", headers=AUTH).status_code == 200


def bomb_png(width, height):
    """A small valid PNG header claiming `width` x `height` pixels."""
    def chunk(kind, data):
        return (struct.pack(">I", len(data)) + kind + data
                + struct.pack(">I", zlib.crc32(kind + data)))
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header)
            + chunk(b"IDAT", zlib.compress(b"\0" * 1024)) + chunk(b"IEND", b""))


def test_hostile_uploads_get_4xx_and_the_server_keeps_serving(client, fitted):
    good = png(texture(fitted[1]))
    cases = [
        ([("file", ("notes.txt", b"just some text", "text/plain"))], 415,
         "not a PNG/JPEG"),
        ([("file", ("cut.png", good[: len(good) // 2], "image/png"))], 400,
         "truncated"),
        ([("file", ("bomb.png", bomb_png(30000, 30000), "image/png"))], 413,
         "at most 262,144 pixels"),
        ([("file", ("wide.png", bomb_png(1000, 1000), "image/png"))], 413,
         "1000 x 1000 pixels exceed"),
        ([("file", ("big.png", good, "image/png"))] * 5, 413, "limit of 4"),
        ([("file", ("empty.png", b"", "image/png"))], 400, "empty"),
    ]
    for upload, status, words in cases:
        response = client.post("/predict", headers=AUTH, files=upload)
        assert_error(response, status, words)
    assert_error(client.post("/predict", headers=AUTH, data={"x": "1"}), 415,
                 "multipart/form-data")
    assert_error(client.post("/predict", headers=AUTH | {"Content-Type": "image/png"},
                             content=good), 415, "multipart/form-data")
    # A body over the cap is refused from its declared length.
    big = [("file", ("huge.png", b"\0" * (2**20 + 10), "image/png"))]
    assert_error(client.post("/predict", headers=AUTH, files=big), 413,
                 "limit of 1,048,576 bytes")
    for field, value, words in [("threshold", "nan", "finite"),
                                ("threshold", "abc", "a number"),
                                ("false_alarm_rate", "1.5", "(0, 1)")]:
        response = client.post("/predict", headers=AUTH, files=files(texture(
            fitted[1])), data={field: value})
        assert_error(response, 422, words)
    # Still serving.
    assert client.post("/predict", headers=AUTH, files=files(
        texture(fitted[1]))).status_code == 200


def test_metrics_count_requests_and_verdicts(client, fitted):
    rng = np.random.default_rng(8)
    client.post("/predict", headers=AUTH, files=files(texture(rng, True), texture(rng)))
    client.get("/info")  # a 401
    text = client.get("/metrics", headers=AUTH).text
    lines = dict(line.rsplit(" ", 1) for line in text.splitlines()
                 if line and not line.startswith("#"))
    assert lines['crdistance_requests_total{route="/predict",status="200"}'] == "1"
    assert lines['crdistance_requests_total{route="/info",status="401"}'] == "1"
    assert lines["crdistance_images_total"] == "2"
    assert int(lines["crdistance_anomalies_total"]) >= 1
    assert lines['crdistance_request_duration_seconds_count{route="/predict"}'] == "1"
    assert lines['crdistance_batch_images_bucket{le="+Inf"}'] == "1"
    assert 'crdistance_model_info{model="parts"' in text
    buckets = [int(value) for key, value in lines.items()
               if key.startswith('crdistance_request_duration_seconds_bucket{route='
                                 '"/predict"')]
    assert buckets == sorted(buckets) and buckets[-1] == 1


def test_micro_batching_gathers_concurrent_jobs():
    batches = []

    def run(jobs):
        batches.append(len(jobs))
        time.sleep(0.05)
        for job in jobs:
            job.results.append(job.n)

    class Job:
        def __init__(self, n):
            self.n, self.results = n, []

    async def main():
        batcher = MicroBatcher(run, lambda job: 1, max_batch_images=4,
                               max_wait_ms=50, max_queue=10)
        batcher.start()
        jobs = await asyncio.gather(*(batcher.submit(Job(n)) for n in range(10)))
        await batcher.stop()
        return jobs

    jobs = asyncio.run(main())
    assert [job.results for job in jobs] == [[n] for n in range(10)]
    assert batches == [4, 4, 2]


def test_a_full_queue_is_refused():
    async def main():
        batcher = MicroBatcher(lambda jobs: time.sleep(0.2), lambda job: 1,
                               max_batch_images=1, max_wait_ms=0, max_queue=2)
        batcher.start()
        waiting = [asyncio.ensure_future(batcher.submit(object())) for _ in range(3)]
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match="2 requests are already waiting"):
            await batcher.submit(object())
        await asyncio.gather(*waiting, return_exceptions=True)
        await batcher.stop()

    asyncio.run(main())


def test_one_bad_job_does_not_fail_its_batch():
    class Job:
        def __init__(self, name):
            self.name, self.results = name, []

    def run(jobs):
        if any(job.name == "bad" for job in jobs):
            raise RuntimeError("bad job")

    async def main():
        batcher = MicroBatcher(run, lambda job: 1, max_batch_images=4,
                               max_wait_ms=30)
        batcher.start()

        outcome = await asyncio.gather(
            *(batcher.submit(Job(name)) for name in ["a", "bad", "b"]),
            return_exceptions=True)
        await batcher.stop()
        return outcome

    first, bad, last = asyncio.run(main())
    assert first.name == "a" and last.name == "b"
    assert isinstance(bad, RuntimeError)


def test_request_timeout_is_a_504(model_file, monkeypatch):
    from starlette.testclient import TestClient

    from crdistance.serve import Server

    monkeypatch.setattr(Server, "run", lambda self, jobs: time.sleep(1.0))
    app = create_app(model_file, ServeConfig(timeout_s=0.2))
    with TestClient(app) as test_client:
        response = test_client.post("/predict", files=files(texture(
            np.random.default_rng(1))))
    assert_error(response, 504, "0.2 s timeout")


def test_reload_is_atomic(model_file, fitted, tmp_path):
    from starlette.testclient import TestClient

    path = tmp_path / "parts.npz"
    shutil.copy(model_file, path)
    app = create_app(path)
    rng = np.random.default_rng(9)
    with TestClient(app) as test_client:
        version = test_client.get("/info").json()["version"]
        # A damaged file: refused, the old model keeps serving.
        path.write_bytes(model_file.read_bytes()[:1000])
        response = test_client.post("/v2/repository/models/parts/load")
        assert_error(response, 409, f"still serving version {version}")
        assert test_client.get("/info").json()["version"] == version
        assert test_client.post("/predict", files=files(texture(rng))).status_code \
            == 200
        # Another model in the file: swapped in whole.
        other = make_pipeline(
            PatchFeaturizer(backbone="mobilenet_v2", weights=None, resize=64,
                            progress=False),
            CRDetector(lam=1.0, lam_scale="trace")).fit(
                [texture(rng) for _ in range(6)])
        save(other, path)
        answer = test_client.post("/v2/repository/models/parts/load").json()
        assert answer["loaded"] and answer["version"] != version
        info = test_client.get("/info").json()
        assert info["version"] == answer["version"]
        assert info["threshold"] == pytest.approx(other[-1].threshold_)
        text = test_client.get("/metrics").text
        assert 'crdistance_model_reloads_total{outcome="ok"} 1' in text
        assert 'crdistance_model_reloads_total{outcome="failed"} 1' in text
