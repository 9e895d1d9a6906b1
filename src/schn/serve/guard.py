"""What wraps every request: a body size limit, a timeout on receiving the body, and request
statistics (counts, errors, latency percentiles per route) for ``GET /stats``.

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
            await send(message)

        try:
            declared = dict(scope["headers"]).get(b"content-length")
            if declared is not None and declared.isdigit() and int(declared) > self.max_body:
                for message in _json_response(413, f"the request body has {int(declared):,} bytes; the limit is "
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
