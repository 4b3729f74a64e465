"""A deadline for reading a request body, as ASGI middleware.

uvicorn bounds only the idle time between requests (`timeout_keep_alive`); a client that sends its headers and then
stalls, or drips its body a byte at a time, holds its connection and an app task for ever (the issue held 300 such
uploads). uvicorn's `receive()` waits on an event that any amount of time may pass before, so the bound belongs
around it: from the moment the app is called, the whole body must arrive within `timeout_s`. A total deadline, not an
idle one, so that a slow drip cannot extend it. On expiry the client gets a 408 with `Connection: close` (uvicorn
then closes the socket) and the app sees a disconnect. Being plain ASGI, it works the same under Ray Serve.
"""

from __future__ import annotations

import json
import time

import anyio
from starlette.requests import ClientDisconnect
from starlette.types import ASGIApp, Message, Receive, Scope, Send


class BodyDeadline:
    def __init__(self, app: ASGIApp, timeout_s: float):
        if not timeout_s > 0:
            raise ValueError(f"body timeout: expected a positive number of seconds, got {timeout_s!r}")
        self.app = app
        self.timeout_s = timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        deadline = time.monotonic() + self.timeout_s
        state = {"body_done": False, "expired": False, "started": False}

        async def guarded_send(message: Message) -> None:
            if state["expired"]:
                return  # the 408 went out already; whatever the app says after the disconnect is moot
            state["started"] = state["started"] or message["type"] == "http.response.start"
            await send(message)

        async def receive_by_deadline() -> Message:
            if state["body_done"]:
                return await receive()  # after the body only a disconnect can come; waiting for it is not reading
            with anyio.move_on_after(max(0.0, deadline - time.monotonic())):
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    state["body_done"] = True
                return message
            if not state["started"]:
                await self._send_408(send)
            state["expired"] = True
            return {"type": "http.disconnect"}

        try:
            await self.app(scope, receive_by_deadline, guarded_send)
        except ClientDisconnect:
            pass  # the client left (or was timed out): there is nobody to answer, and it is not a server error

    async def _send_408(self, send: Send) -> None:
        detail = f"request body: not received within {self.timeout_s:g} s"
        body = json.dumps({"detail": detail}).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 408,
                "headers": [
                    (b"content-type", b"application/json"),
                    (b"content-length", str(len(body)).encode()),
                    (b"connection", b"close"),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})


def headers_deadline_protocol(timeout_s: float) -> type:
    """uvicorn's HTTP protocol (httptools, else h11) with a deadline for request headers, which no ASGI middleware can
    see: a connection must complete the headers of its next request within `timeout_s` of connecting or of its last
    response, else it is closed. (Idle keep-alive connections are still closed sooner by `timeout_keep_alive`.) It uses
    what both of uvicorn's protocols share: `cycle`, the request-response cycle of the latest request whose headers
    were complete, and the connection_made / on_response_complete / connection_lost hooks."""
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    class HeadersDeadline(AutoHTTPProtocol):
        _headers_timer = None

        def connection_made(self, transport) -> None:
            super().connection_made(transport)
            self._arm_headers_deadline()

        def on_response_complete(self) -> None:
            super().on_response_complete()
            self._arm_headers_deadline()

        def connection_lost(self, exc: Exception | None) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
            super().connection_lost(exc)

        def _arm_headers_deadline(self) -> None:
            if self._headers_timer is not None:
                self._headers_timer.cancel()
            self._headers_timer = self.loop.call_later(timeout_s, self._headers_expired, self.cycle)

        def _headers_expired(self, last_cycle) -> None:
            # Still no newer request, and the last one (if any) answered: the client is stalling in its headers. A
            # pipelined request still being answered is not stalling; its own on_response_complete re-arms.
            waiting = self.cycle is last_cycle and (last_cycle is None or last_cycle.response_complete)
            if waiting and not self.transport.is_closing():
                self.transport.close()

    return HeadersDeadline
