"""The ASGI application of ``crdistance serve`` (Starlette).

Routes: the Open Inference Protocol (KServe v2) health, metadata, infer and
repository-load routes; ``POST /predict`` for image files; ``GET /`` the
operator's page; ``GET /info``; ``GET /metrics`` (Prometheus). Every error is
a JSON body ``{"error": {"status", "message"}}``.
"""

import asyncio
import hmac
import json
import logging
import signal
import threading
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.routing import Route

from crdistance.serve import _routes as routes
from crdistance.serve._batching import MicroBatcher, QueueFull
from crdistance.serve._limits import BodyLimit, BodyTooLarge
from crdistance.serve._metrics import Metrics
from crdistance.serve._model import RequestError, ServedModel
from crdistance.serve._routes import error_response

LOG = logging.getLogger("uvicorn.error")  # shown with uvicorn's own lines
OPEN_PATHS = ("/", "/v2/health/live", "/v2/health/ready", "/favicon.ico")
"""Paths answered without the API key: the static page and the probes."""


@dataclass
class ServeConfig:
    """The limits and behaviour of a server (the options of ``crdistance serve``).

    Attributes
    ----------
    name : str or None
        The model's name in the v2 routes (None: the model file's stem).
    api_key : str or None
        When set, every route but the page and the health probes needs it,
        as ``Authorization: Bearer <key>`` or ``X-API-Key: <key>``.
    max_upload_bytes : int
        Largest request body; larger ones get 413 before they are read whole.
    max_pixels : int
        Largest image, in pixels (width x height), checked before decoding.
    max_images : int
        Most images (or feature maps) in one request.
    timeout_s : float
        A request waiting longer than this for its result gets 504.
    max_batch_images, max_wait_ms, max_queue : int, float, int
        Micro-batching: see :class:`crdistance.serve._batching.MicroBatcher`.
    """

    name: str = None
    api_key: str = None
    max_upload_bytes: int = 32 * 2**20
    max_pixels: int = 40_000_000
    max_images: int = 32
    timeout_s: float = 60.0
    max_batch_images: int = 16
    max_wait_ms: float = 5.0
    max_queue: int = 256


class Server:
    """The state behind the routes: the served model, batcher and metrics.

    The model is replaced whole: :meth:`reload` builds the new
    :class:`ServedModel` in a thread and then assigns it, so a request sees
    the old model or the new one, never a half-loaded one.
    """

    def __init__(self, model_path, config):
        self.model_path = model_path
        self.config = config
        self.metrics = Metrics()
        self.model = None
        self.reload_lock = asyncio.Lock()
        # Held by a batch and while a model is built: building the featurizer
        # traces the backbone with torch.fx, which patches torch.nn.Module
        # for the whole process meanwhile, so a batch running then would fail.
        self.model_lock = threading.Lock()
        self.batcher = None
        self.key = (config.api_key or "").encode() or None

    def size_of(self, job):
        return len(job.images) if job.images is not None else len(job.features)

    def run(self, jobs):
        with self.model_lock:
            model = self.model  # one reference for the whole batch
            model.run(jobs)

    def build(self):
        """A new :class:`ServedModel` of the model file (no batch meanwhile)."""
        with self.model_lock:
            return ServedModel(self.model_path, self.config.name)

    async def start(self):
        if self.model is None:
            self.model = await asyncio.to_thread(self.build)
        loop = asyncio.get_running_loop()
        self.batcher = MicroBatcher(
            self.run, self.size_of,
            max_batch_images=self.config.max_batch_images,
            max_wait_ms=self.config.max_wait_ms, max_queue=self.config.max_queue,
            on_batch=lambda n, s: loop.call_soon_threadsafe(self.metrics.batch, n, s))
        self.batcher.start()

    async def stop(self):
        if self.batcher is not None:
            await self.batcher.stop()

    async def reload(self):
        """Read the model file again; the old model serves until the new one
        is whole, and stays if the new one fails to load."""
        async with self.reload_lock:
            try:
                model = await asyncio.to_thread(self.build)
            except Exception:
                self.metrics.reloads["failed"] += 1
                raise
            if model.name != self.model.name:
                self.metrics.reloads["failed"] += 1
                raise RequestError("the reloaded model has another name", 409)
            self.model = model
            self.metrics.reloads["ok"] += 1
            return model

    def authorised(self, request):
        if self.key is None:
            return True
        given = request.headers.get("x-api-key", "")
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer":
            given = token.strip()
        # Constant time in the key's content (hmac.compare_digest).
        return hmac.compare_digest(given.encode(), self.key)

    async def score(self, job):
        try:
            job = await asyncio.wait_for(self.batcher.submit(job),
                                         self.config.timeout_s)
        except TimeoutError:
            raise RequestError(
                f"no result within the server's {self.config.timeout_s:g} s timeout",
                504) from None
        except QueueFull as exc:
            raise RequestError(f"server busy: {exc}; retry later", 503) from None
        self.metrics.verdicts(job.results)
        return job


def create_app(model_path, config=None, *, model=None):
    """The Starlette application serving the model file `model_path`.

    Parameters
    ----------
    model_path : path-like
        A model file of ``crdistance fit`` (safe format).
    config : ServeConfig or None
        Limits, key and batching; None takes the defaults.
    model : ServedModel or None
        `model_path` already loaded (``crdistance serve`` loads it first to
        fail early); None loads it at startup.

    Returns
    -------
    app : starlette.applications.Starlette
        ``app.state.server`` is the :class:`Server`.
    """
    config = config or ServeConfig()
    server = Server(model_path, config)
    server.model = model

    @asynccontextmanager
    async def lifespan(app):
        await server.start()
        watch_hangup(server)
        try:
            yield
        finally:
            await server.stop()

    def wrap(handler, route):
        async def endpoint(request):
            start = time.perf_counter()
            server.metrics.in_flight += 1
            try:
                if request.url.path not in OPEN_PATHS and not server.authorised(
                        request):
                    response = error_response(401, "missing or wrong API key")
                    response.headers["WWW-Authenticate"] = "Bearer"
                else:
                    response = await handler(request, server)
            except RequestError as exc:
                response = error_response(exc.status, str(exc))
            except BodyTooLarge as exc:
                response = error_response(413, str(exc))
            except ClientDisconnect:
                response = Response(status_code=499)
            except HTTPException as exc:
                response = error_response(exc.status_code, str(exc.detail))
            except json.JSONDecodeError as exc:
                response = error_response(400, f"the body is not valid JSON: {exc}")
            finally:
                server.metrics.in_flight -= 1
            server.metrics.request(route, response.status_code,
                                   time.perf_counter() - start)
            return response
        return endpoint

    table = [
        ("/", routes.page, ["GET"]),
        ("/info", routes.info, ["GET"]),
        ("/metrics", routes.metrics, ["GET"]),
        ("/predict", routes.predict, ["POST"]),
        ("/v2", routes.server_metadata, ["GET"]),
        ("/v2/health/live", routes.live, ["GET"]),
        ("/v2/health/ready", routes.ready, ["GET"]),
        ("/v2/models/{name}", routes.model_metadata, ["GET"]),
        ("/v2/models/{name}/ready", routes.model_ready, ["GET"]),
        ("/v2/models/{name}/infer", routes.infer, ["POST"]),
        ("/v2/repository/models/{name}/load", routes.load, ["POST"]),
    ]
    app = Starlette(
        routes=[Route(path, wrap(handler, path), methods=methods)
                for path, handler, methods in table],
        middleware=[Middleware(BodyLimit, max_bytes=config.max_upload_bytes)],
        exception_handlers={
            404: lambda request, exc: error_response(
                404, f"no route {request.url.path}"),
            405: lambda request, exc: error_response(
                405, f"{request.method} is not allowed on {request.url.path}"),
            500: lambda request, exc: error_response(
                500, f"internal error: {type(exc).__name__}"),
        },
        lifespan=lifespan,
    )
    app.state.server = server
    return app


def watch_hangup(server):
    """Reload the model on SIGHUP (where the platform has it), as daemons do."""
    loop = asyncio.get_running_loop()
    hangup = getattr(signal, "SIGHUP", None)
    if hangup is None:
        return

    def reload():
        task = loop.create_task(server.reload())
        task.add_done_callback(_log_reload)

    try:
        loop.add_signal_handler(hangup, reload)
    except (NotImplementedError, RuntimeError, ValueError):
        pass  # not the main thread (a test client), or no signals here


def _log_reload(task):
    exc = task.exception()
    if exc is None:
        LOG.info("reloaded the model: version %s", task.result().version)
    else:
        LOG.error("reload failed, the old model keeps serving: %s", exc)
