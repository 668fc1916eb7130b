"""A cap on request bodies, enforced while they arrive.

A declared ``Content-Length`` over the cap is refused before anything is
read; a body sent in chunks is counted as it streams and refused once it
passes the cap, so a client cannot make the server buffer more than the cap.
"""


class BodyTooLarge(Exception):
    """The request body passed the server's cap (answered 413)."""


class BodyLimit:
    """ASGI middleware: bodies of at most `max_bytes` reach the application."""

    def __init__(self, app, max_bytes):
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length")
        limit = self.max_bytes
        if declared is not None:
            try:
                too_large = int(declared) > limit
            except ValueError:
                too_large = False
            if too_large:
                await _refuse(send, f"the request body of {int(declared):,} bytes "
                              f"exceeds the server's limit of {limit:,} bytes")
                return
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise BodyTooLarge(f"the request body exceeds the server's "
                                       f"limit of {limit:,} bytes")
            return message

        await self.app(scope, counted, send)


async def _refuse(send, message):
    import json

    body = json.dumps({"error": {"status": 413, "message": message}}).encode()
    await send({"type": "http.response.start", "status": 413,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})
