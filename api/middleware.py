"""Request bodies are capped (`MAX_BODY_BYTES`): larger ones get 413, by header or by counting
the stream when there is no Content-Length."""

from __future__ import annotations

from fastapi.responses import JSONResponse

from api.errors import error_body


class BodySizeLimit:
    def __init__(self, app, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope.get("headers") or []).get(b"content-length")
        if length is not None and length.isdigit() and int(length) > self.max_bytes:
            return await self._too_large(send)
        seen = 0
        refused = False

        async def limited_receive():
            nonlocal seen, refused
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes and not refused:
                    refused = True
                    await self._too_large(send)
                    return {"type": "http.disconnect"}  # the app stops reading
            return message

        async def guarded_send(message):
            if not refused:  # after our 413 the app's own reply goes nowhere
                await send(message)

        await self.app(scope, limited_receive, guarded_send)

    async def _too_large(self, send) -> None:
        body = error_body(413, f"Request body is larger than {self.max_bytes} bytes.")
        await JSONResponse(body, status_code=413)({"type": "http"}, None, send)


class NodeHeader:
    """Every HTTP answer says which worker gave it: `X-VisionGuard-Node: <NODE_ID>` (doc/CLUSTER.md)."""

    def __init__(self, app, node_id: str) -> None:
        self.app = app
        self.header = (b"x-visionguard-node", node_id.encode())

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)

        async def send_with_node(message):
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), self.header]
            await send(message)

        await self.app(scope, receive, send_with_node)
