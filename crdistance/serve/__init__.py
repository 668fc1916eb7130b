"""An HTTP server for a fitted image model: ``crdistance serve MODEL``.

Needs the ``serve`` extra (Starlette, uvicorn, python-multipart). The
application is :func:`create_app`; ``crdistance serve`` runs it with uvicorn
on 127.0.0.1. See the deployment page of the documentation for the routes.
"""

from crdistance.serve._app import ServeConfig, Server, create_app

__all__ = ["ServeConfig", "Server", "create_app"]
