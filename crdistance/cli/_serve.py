"""``crdistance serve``: run the HTTP server of :mod:`crdistance.serve` with uvicorn."""

import ipaddress
import os

from crdistance.cli._io import CommandError

API_KEY_VARIABLE = "CRDISTANCE_API_KEY"


def serve(args, console):
    """Load the model (failing early, in one line), then serve it until SIGTERM
    or Ctrl-C; uvicorn finishes the requests in flight before it stops."""
    try:
        import uvicorn

        from crdistance.serve import ServeConfig, create_app
        from crdistance.serve._model import ServedModel
    except ImportError as exc:
        raise CommandError(
            f"crdistance serve needs the serve extra ({exc.name} is missing): "
            'pip install "crdistance[serve]"') from exc
    api_key = args.api_key or os.environ.get(API_KEY_VARIABLE) or None
    if not _is_loopback(args.host) and api_key is None:
        console.warn(f"serving on {args.host} without an API key: anyone who can "
                     f"reach it can use the model (set --api-key or "
                     f"${API_KEY_VARIABLE})")
    config = ServeConfig(
        name=args.name, api_key=api_key,
        max_upload_bytes=int(args.max_upload_mb * 2**20),
        max_pixels=args.max_pixels, max_images=args.max_images,
        timeout_s=args.timeout, max_batch_images=args.max_batch,
        max_wait_ms=args.batch_wait_ms)
    console.info(f"serve: loading {args.model}")
    model = ServedModel(args.model, args.name)
    app = create_app(args.model, config, model=model)
    url = f"http://{_url_host(args.host)}:{args.port}"
    console.info(f"serve: {model.name} (version {model.version}) at {url}/ : the "
                 "page, POST /predict, /v2 (KServe), /metrics"
                 + ("; API key required" if api_key else ""))
    server = uvicorn.Server(uvicorn.Config(
        app, host=args.host, port=args.port, lifespan="on",
        log_level="warning" if args.quiet else "info",
        timeout_graceful_shutdown=args.graceful_timeout,
        access_log=not args.quiet))
    server.run()
    if not server.started:
        raise CommandError(f"could not serve on {args.host}:{args.port} (see the "
                           "message above: address in use?)")
    return {"model": str(args.model), "url": url, "stopped": True}, "serve: stopped"


def _is_loopback(host):
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _url_host(host):
    return f"[{host}]" if ":" in host else host
