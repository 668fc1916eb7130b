"""The handlers of the server's routes: ``handler(request, server)`` ->
response. Errors are raised as :class:`RequestError` and answered as JSON by
the application (:mod:`crdistance.serve._app`)."""

import asyncio
import json
import time
from importlib import resources

from starlette.exceptions import HTTPException
from starlette.responses import HTMLResponse, JSONResponse, Response

from crdistance._version import __version__
from crdistance.serve._inputs import decode_image, flag, optional_number, parse_infer
from crdistance.serve._metrics import CONTENT_TYPE
from crdistance.serve._model import Job, RequestError

PAGE_POLICY = ("default-src 'none'; script-src 'unsafe-inline'; style-src "
               "'unsafe-inline'; img-src data: blob:; connect-src 'self'; "
               "base-uri 'none'; form-action 'none'")


def error_response(status, message):
    """``{"error": {"status", "message"}}`` with that status."""
    return JSONResponse({"error": {"status": status, "message": message}}, status)


async def page(request, server):
    html = resources.files("crdistance.serve").joinpath("page.html").read_text("utf-8")
    return HTMLResponse(html, headers={
        "Content-Security-Policy": PAGE_POLICY,
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "Cache-Control": "no-cache",
    })


async def info(request, server):
    config = server.config
    return JSONResponse(server.model.info() | {
        "max_upload_bytes": config.max_upload_bytes,
        "max_pixels": config.max_pixels,
        "max_images": config.max_images,
        "auth": server.key is not None,
    })


async def metrics(request, server):
    return Response(server.metrics.text(server.model.info()), media_type=CONTENT_TYPE)


async def predict(request, server):
    """Multipart images -> one result per image (see the module of the page)."""
    kind = request.headers.get("content-type", "")
    if not kind.startswith("multipart/form-data"):
        raise RequestError(
            f"POST /predict takes multipart/form-data with file fields named "
            f'"file"; got content type {kind or "none"!r}', 415)
    start = time.perf_counter()
    limit = server.config.max_images
    try:
        form = await request.form(max_files=limit, max_fields=16)
    except HTTPException as exc:
        if "too many files" in str(exc.detail).lower():
            raise RequestError(f"too many images in one request (the server's "
                               f"limit of {limit} per request)", 413) from None
        raise RequestError(f"malformed multipart body: {exc.detail}", 400) from None
    try:
        uploads = form.getlist("file")
        if not uploads or any(isinstance(item, str) for item in uploads):
            raise RequestError('send the images as multipart/form-data file '
                               'fields named "file"', 400)
        files = [(upload.filename or f"image {i + 1}", await upload.read())
                 for i, upload in enumerate(uploads)]
        options = {key: form.get(key) for key in ("false_alarm_rate", "threshold",
                                                  "overlay")}
    finally:
        await form.close()
    for key in ("false_alarm_rate", "threshold", "overlay"):
        if request.query_params.get(key) is not None:
            options[key] = request.query_params[key]
    model = server.model
    rate, threshold = _decision(options, model)
    max_pixels = server.config.max_pixels
    images = await asyncio.to_thread(
        lambda: [decode_image(data, name, max_pixels=max_pixels)
                 for name, data in files])
    job = await server.score(Job(images=images, filenames=[n for n, _ in files],
                                 overlay=flag(options["overlay"]),
                                 false_alarm_rate=rate, threshold=threshold))
    return JSONResponse({"model": model.name, "version": model.version,
                         "elapsed_ms": 1000 * (time.perf_counter() - start),
                         "results": job.results})


def _decision(source, model):
    rate = optional_number(source.get("false_alarm_rate"), "false_alarm_rate")
    threshold = optional_number(source.get("threshold"), "threshold")
    model.check_decision(rate, threshold)
    return rate, threshold


# -- Open Inference Protocol (KServe v2) ---------------------------------------

async def server_metadata(request, server):
    return JSONResponse({"name": "crdistance", "version": __version__,
                         "extensions": ["model_repository"]})


async def live(request, server):
    return JSONResponse({"live": True})


async def ready(request, server):
    is_ready = server.model is not None
    return JSONResponse({"ready": is_ready}, 200 if is_ready else 503)


def _model_named(request, server):
    name = request.path_params["name"]
    if name != server.model.name:
        raise RequestError(f"no model {name!r}; this server serves "
                           f"{server.model.name!r}", 404)
    return server.model


async def model_metadata(request, server):
    model = _model_named(request, server)
    h, w, d = model.feature_shape
    return JSONResponse({
        "name": model.name,
        "versions": [model.version],
        "platform": "crdistance",
        "inputs": [
            {"name": "images", "datatype": "UINT8", "shape": [-1, -1, -1, 3]},
            {"name": "features", "datatype": "FP32", "shape": [-1, h, w, d]},
        ],
        "outputs": [
            {"name": "score", "datatype": "FP64", "shape": [-1]},
            {"name": "is_anomaly", "datatype": "BOOL", "shape": [-1]},
            {"name": "p_value", "datatype": "FP64", "shape": [-1]},
            {"name": "threshold", "datatype": "FP64", "shape": [-1]},
        ],
        "parameters": model.info(),
    })


async def model_ready(request, server):
    _model_named(request, server)
    return JSONResponse({"name": server.model.name, "ready": True})


async def infer(request, server):
    model = _model_named(request, server)
    kind = request.headers.get("content-type", "")
    if kind and not kind.startswith("application/json"):
        raise RequestError("infer takes application/json (the binary tensor "
                           f"extension is not supported); got {kind!r}", 415)
    body = json.loads(await request.body())
    config = server.config
    name, array, parameters = await asyncio.to_thread(
        parse_infer, body, feature_shape=model.feature_shape,
        max_pixels=config.max_pixels, max_images=config.max_images)
    rate, threshold = _decision(parameters, model)
    job = Job(images=list(array) if name == "images" else None,
              features=array if name == "features" else None,
              false_alarm_rate=rate, threshold=threshold)
    job = await server.score(job)
    n = len(job.results)
    p_values = [result["p_value"] for result in job.results]
    outputs = [
        {"name": "score", "datatype": "FP64", "shape": [n],
         "data": [result["score"] for result in job.results]},
        {"name": "is_anomaly", "datatype": "BOOL", "shape": [n],
         "data": [result["is_anomaly"] for result in job.results]},
        {"name": "threshold", "datatype": "FP64", "shape": [n],
         "data": [result["threshold"] for result in job.results]},
    ]
    if all(p is not None for p in p_values):
        outputs.append({"name": "p_value", "datatype": "FP64", "shape": [n],
                        "data": p_values})
    answer = {"model_name": model.name, "model_version": model.version,
              "outputs": outputs}
    if isinstance(body.get("id"), str):
        answer["id"] = body["id"]
    return JSONResponse(answer)


async def load(request, server):
    """Model repository extension: reload the model file (atomically)."""
    _model_named(request, server)
    try:
        model = await server.reload()
    except RequestError:
        raise
    except Exception as exc:  # the old model keeps serving
        raise RequestError(f"reload failed, still serving version "
                           f"{server.model.version}: {exc}", 409) from exc
    return JSONResponse({"name": model.name, "version": model.version,
                         "loaded": True})
