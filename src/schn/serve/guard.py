"""What guards the service: per request, a body size limit, a timeout on receiving the body,
security headers on every response, and request statistics (counts, errors, latency percentiles
per route) for ``GET /stats``; per connection, a deadline for a request's headers and a cap on
open connections.

The request guard is a plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``,
which would add a task and a queue to every request of a service whose searches take a
millisecond. The connection guard is a subclass of uvicorn's h11 protocol, because nothing an
ASGI app sees runs before a request's headers are complete: uvicorn itself times out only an idle
kept-alive connection, so a client that sends part of its headers and goes quiet (slowloris)
would hold its connection for ever.
"""
from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import deque

import numpy as np
from starlette.exceptions import HTTPException

WINDOW = 10_000  # latencies kept per route for the percentiles
# On every response that does not set its own: no MIME sniffing (an upload is never run as a
# script or page), and a policy that lets a JSON answer or an image load nothing and be framed by nobody
SECURITY_HEADERS = [(b"x-content-type-options", b"nosniff"),
                    (b"content-security-policy", b"default-src 'none'; frame-ancestors 'none'")]


class RequestStats:
    """Counts, error counts and the latencies of the last ``WINDOW`` requests, per route."""

    def __init__(self):
        self._lock = threading.Lock()
        self._routes: dict[str, dict] = {}
        self.started = time.time()

    def record(self, route: str, status: int, seconds: float) -> None:
        with self._lock:
            entry = self._routes.setdefault(route, {"count": 0, "errors": 0, "latencies": deque(maxlen=WINDOW)})
            entry["count"] += 1
            entry["errors"] += status >= 400
            entry["latencies"].append(seconds)

    def summary(self) -> dict:
        with self._lock:
            routes = {k: (v["count"], v["errors"], np.array(v["latencies"])) for k, v in self._routes.items()}
        out = {}
        for route, (count, errors, lat) in sorted(routes.items()):
            p50, p90, p99 = (np.percentile(lat, [50, 90, 99]) * 1000).round(3).tolist() if len(lat) else [None] * 3
            out[route] = {"count": count, "errors": errors, "p50_ms": p50, "p90_ms": p90, "p99_ms": p99}
        return out


def _json_response(status: int, message: str):
    body = json.dumps({"error": message, "status": status}).encode()
    return [{"type": "http.response.start", "status": status,
             "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]},
            {"type": "http.response.body", "body": body}]


def _over(digits: bytes, limit: int) -> bool:
    return len(digits) > 18 or int(digits) > limit  # int() refuses over 4,300 digits; 19 are over any limit


def _size(digits: bytes) -> str:
    return f"{int(digits):,}" if len(digits) <= 18 else f"a {len(digits)}-digit number of"


def _with_security_headers(headers) -> list:
    headers = list(headers)
    present = {name.lower() for name, _ in headers}
    return headers + [(name, value) for name, value in SECURITY_HEADERS if name not in present]


class RequestGuard:
    """ASGI middleware: refuses bodies over ``max_body`` bytes (413, by Content-Length before
    reading, or while reading a body without one), gives up on a client that sends nothing for
    ``body_timeout`` seconds (408), and records every request in ``stats``."""

    def __init__(self, app, stats: RequestStats, max_body: int, body_timeout: float):
        self.app, self.stats, self.max_body, self.body_timeout = app, stats, max_body, body_timeout

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        start, status = time.perf_counter(), [0]

        async def send_tracked(message):
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                message = {**message, "headers": _with_security_headers(message.get("headers", []))}
            await send(message)

        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and _over(declared, self.max_body):
                for message in _json_response(413, f"the request body has {_size(declared)} bytes; the limit is "
                                                   f"{self.max_body:,}"):
                    await send_tracked(message)
                return
            await self.app(scope, self._limited(receive), send_tracked)
        finally:
            route = scope.get("route")
            path = route.path.replace(":path}", "}") if route is not None else "(no route)"
            name = f"{scope['method']} {path}"
            self.stats.record(name, status[0] or 500, time.perf_counter() - start)

    def _limited(self, receive):
        received = 0

        async def receive_limited():
            nonlocal received
            try:
                message = await asyncio.wait_for(receive(), self.body_timeout)
            except asyncio.TimeoutError:
                raise HTTPException(408, f"no request data for {self.body_timeout:g} s; send the body promptly") from None
            if message["type"] == "http.request":
                received += len(message.get("body", b""))
                if received > self.max_body:
                    raise HTTPException(413, f"the request body is over the limit of {self.max_body:,} bytes")
            return message

        return receive_limited


def _raw_json_response(status: int, reason: str, message: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, for answers given outside any request."""
    body = json.dumps({"error": message, "status": status}).encode()
    head = [f"HTTP/1.1 {status} {reason}".encode(), b"content-type: application/json",
            b"content-length: " + str(len(body)).encode(), b"connection: close",
            *(name + b": " + value for name, value in SECURITY_HEADERS)]
    return b"\r\n".join(head) + b"\r\n\r\n" + body


def _too_many_connections(limit: int):
    """The ASGI app that answers every request on a connection over the cap."""
    async def refuse(scope, receive, send):
        for message in _json_response(503, f"the service has {limit} connections open, its limit; retry shortly "
                                           "or close idle connections"):
            if message["type"] == "http.response.start":
                message["headers"] += [(b"connection", b"close"), (b"retry-after", b"1"), *SECURITY_HEADERS]
            await send(message)
    return refuse


def guarded_protocol(header_timeout: float, max_connections: int) -> type:
    """uvicorn's h11 protocol (pass it as ``uvicorn.Config(http=...)``) with two guards:

    * a request's headers must be complete within ``header_timeout`` seconds of the connection
      being opened, or of the first byte of a later request on it; else the client gets a 408 (if
      it sent part of a request) and the connection is closed. After the headers, the request
      guard's body timeout takes over; between requests, uvicorn's keep-alive timeout.
    * at most ``max_connections`` connections are served; a request on one more gets a 503 JSON
      answer and its connection is closed, so the service answers instead of running out of file
      descriptors, and a flood of half-open connections is shed by the header deadline.
    """
    import h11
    from uvicorn.protocols.http.h11_impl import H11Protocol

    class GuardedH11Protocol(H11Protocol):
        _header_timer = None  # asyncio.TimerHandle while a request's headers are awaited
        _got_bytes = False  # part of a request arrived while the timer ran

        def connection_made(self, transport):
            super().connection_made(transport)
            if len(self.connections) > max_connections:
                self.app = _too_many_connections(max_connections)
            self._arm()

        def data_received(self, data: bytes) -> None:
            if self._header_timer is None and self._between_requests():
                self._arm()
            self._got_bytes = True
            super().data_received(data)
            if not self._between_requests():  # the headers are in: the request has begun
                self._disarm()

        def connection_lost(self, exc):
            self._disarm()
            super().connection_lost(exc)

        def send_400_response(self, msg: str) -> None:  # h11 could not parse the request: JSON, as every error
            self.transport.write(_raw_json_response(400, "Bad Request", "the request is not valid HTTP/1.1, or its "
                                                    "headers are over 16 KiB"))
            self.transport.close()

        def _between_requests(self) -> bool:
            return self.cycle is None or self.cycle.response_complete

        def _arm(self) -> None:
            self._disarm()
            self._got_bytes = False
            self._header_timer = self.loop.call_later(header_timeout, self._headers_late)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _headers_late(self) -> None:
            self._header_timer = None
            if self.transport.is_closing() or not self._between_requests():
                return
            if self._got_bytes and self.conn.their_state is h11.IDLE:
                self.transport.write(_raw_json_response(408, "Request Timeout", f"the request's headers did not "
                                                        f"arrive within {header_timeout:g} s; send them promptly"))
            self.transport.close()

    return GuardedH11Protocol
