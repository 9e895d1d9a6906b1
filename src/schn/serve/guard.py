"""What wraps every request: a body size limit, a timeout on receiving the body, security headers
on every response, and request statistics (counts, errors, latency percentiles per route) for
``GET /stats``.

A plain ASGI middleware rather than Starlette's ``BaseHTTPMiddleware``, which would add a task
and a queue to every request of a service whose searches take a millisecond.
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
