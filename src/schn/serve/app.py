"""The HTTP API of ``schn serve`` (FastAPI): search, items, health, stats, and the web page.

Every error a client can cause is a 4xx JSON body ``{"error": one line, "status": code}``.
Searches and image decoding run in worker threads, concurrently; see ``service.py`` for why a
mutation never blocks them and why an acknowledged item survives a crash.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import quote

import anyio
import swagger_ui
from fastapi import FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse
from fastapi.security import APIKeyHeader
from fastapi.staticfiles import StaticFiles
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException

from ..errors import SchnError
from ..index.images import MEDIA_TYPES, STORE
from . import schemas
from .guard import SECURITY_HEADERS, RequestGuard, RequestStats
from .service import Conflict, ItemNotFound, NoEncoder, SearchService, hex_code
from .uploads import BadUpload, decode_upload

STATIC = Path(__file__).parent / "static"
# declared for the OpenAPI schema (Authorize in /docs); checked by the routes, only when a key is set
API_KEY = APIKeyHeader(name="X-API-Key", auto_error=False, description="needed by POST /items and DELETE /items "
                       "when the service was started with --api-key")
log = logging.getLogger("schn.serve")
# The pages load only this service's own files; Swagger UI styles its elements inline (style-src),
# and its start script is a file of ours (static/docs.js), so no inline script runs anywhere
PAGE_CSP = "default-src 'self'; img-src 'self' blob: data:; frame-ancestors 'none'; base-uri 'none'"
DOCS_CSP = ("default-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; frame-ancestors 'none'; "
            "base-uri 'none'")


@dataclass
class ServeLimits:
    max_request_bytes: int = 16 * 1024 * 1024  # a whole request body, all its images together
    max_pixels: int = 40_000_000  # per image, read from its header before decoding
    max_images: int = 64  # per POST /items
    max_k: int = 1000
    max_results: int = 10_000  # radius search results returned at most
    body_timeout: float = 30.0  # seconds a client may stay silent while sending a body
    search_timeout: float = 30.0  # seconds a search may take before the client gets a 503
    # searches and uploads decoded at once; more threads than cores only fight over the GIL
    # (measured at 1M codes: 4 threads instead of anyio's 40 cut the upload p99 from 312 to 204 ms)
    worker_threads: int = field(default_factory=lambda: 2 * (os.cpu_count() or 1))


def create_app(index_path, run_dir=None, *, api_key: str | None = None, limits: ServeLimits | None = None,
               device: str | None = None, searcher: str = "auto", verify: bool = True) -> FastAPI:
    """The service for the local index folder ``index_path``; ``api_key`` guards POST/DELETE /items."""
    limits = limits or ServeLimits()
    service = SearchService(index_path, run_dir, device=device, searcher=searcher, verify=verify)
    stats = RequestStats()

    @asynccontextmanager
    async def lifespan(app):
        yield
        service.close()  # waits for a running compaction; releases the index's writer lock

    app = FastAPI(title="schn search service", version="1", docs_url=None, redoc_url=None, lifespan=lifespan,
                  description="Find similar images by Hamming distance between learned binary codes.")
    app.state.service, app.state.stats, app.state.limits = service, stats, limits
    app.add_middleware(RequestGuard, stats=stats, max_body=limits.max_request_bytes, body_timeout=limits.body_timeout)
    _add_error_handlers(app)

    def get(path: str, **options):
        """A GET route that answers HEAD too (the same headers, no body; HEAD left out of the schema)."""
        def register(fn):
            routed = app.get(path, **options)(fn)
            app.add_api_route(path, fn, methods=["HEAD"], include_in_schema=False,
                              **{k: v for k, v in options.items() if k == "response_model"})
            return routed
        return register

    def check_key(given: str | None) -> None:
        if api_key is None:
            return
        if given is None:
            raise HTTPException(401, "this endpoint needs an API key: send it in the X-API-Key header")
        if not hmac.compare_digest(given.encode(), api_key.encode()):
            raise HTTPException(403, "wrong API key")

    def result_rows(index, found_ids, distances, rows) -> list[dict]:
        out = []
        for rank, (item_id, dist, row) in enumerate(zip(found_ids, distances, rows)):
            path = index.source_path(int(row))
            out.append({"rank": rank + 1, "id": item_id, "distance": int(dist), "label": index.label_text(int(row)),
                        "image_url": stored_image_url(item_id, path)})
        return out

    limiter = []  # created on first use, inside the event loop

    async def in_thread(fn, timeout: float | None = None):
        if not limiter:
            limiter.append(anyio.CapacityLimiter(limits.worker_threads))
        if timeout is None:
            return await anyio.to_thread.run_sync(fn, limiter=limiter[0])
        try:  # an abandoned search finishes in its thread; the client is told now
            return await asyncio.wait_for(anyio.to_thread.run_sync(fn, abandon_on_cancel=True, limiter=limiter[0]),
                                          timeout)
        except asyncio.TimeoutError:
            raise HTTPException(503, f"the search took longer than {timeout:g} s; try a smaller k or radius") from None

    @get("/health", response_model=schemas.Health)
    def health():
        index = service.index
        return {"status": "ok", "items": len(index), "bits": index.bits}

    @get("/stats", response_model=schemas.Stats)
    def get_stats():
        return {**service.describe(), "uptime_s": round(time.time() - stats.started, 3),
                "requests": stats.summary()}

    @app.post("/search", response_model=schemas.SearchResponse, openapi_extra=schemas.SEARCH_BODY,
              responses=schemas.ERRORS)
    async def search(request: Request, k: int = Query(10, ge=1, le=limits.max_k, description="neighbours"),
                     radius: int | None = Query(None, ge=0, description="every item within this Hamming distance"),
                     limit: int = Query(1000, ge=1, le=limits.max_results, description="radius results at most")):
        """Search by an uploaded image (multipart field ``image``) or by a stored item (JSON ``{"id": ...}``)."""
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind == "application/json":
            item_id = _json_id(await request.body())
            query = {"id": item_id}

            def codes_and_self(index):
                item = service.item_id(item_id, index)
                row = service.row_of(index, item)
                return index.codes_at([row]), item
        elif kind == "multipart/form-data":
            form = await request.form(max_files=1, max_fields=8)
            upload = form.get("image")
            if not isinstance(upload, UploadFile):
                raise HTTPException(400, "send the query image in a multipart file field named 'image'")
            data, name = await upload.read(), upload.filename or "image"
            query = {"image": name}

            def codes_and_self(index):
                image, _, _ = decode_upload(data, name, limits.max_pixels)
                return service.encode([image]), None
        else:
            raise HTTPException(415, "send multipart/form-data with a file field 'image', or application/json "
                                     '{"id": ...} (Content-Type was ' + (kind or "missing") + ")")

        def run():
            start, index = time.perf_counter(), service.index  # one snapshot for the whole request
            code, self_id = codes_and_self(index)
            if radius is None:
                found = index.search_ids([self_id], k) if self_id is not None else index.search(code, k)
                ids, dists, rows = found.ids[0].tolist(), found.distances[0], found.rows[0]
                truncated = False
            else:
                found = index.radius_search(code, radius)[0]
                keep = found.ids != self_id if self_id is not None else slice(None)
                ids, dists, rows = found.ids[keep].tolist(), found.distances[keep], found.rows[keep]
                truncated = len(ids) > limit
                ids, dists, rows = ids[:limit], dists[:limit], rows[:limit]
            results = result_rows(index, ids, dists, rows)
            return {"query": query, "k": None if radius is not None else k, "radius": radius,
                    "count": len(results), "truncated": truncated,
                    "took_ms": round((time.perf_counter() - start) * 1000, 3), "results": results}

        return await in_thread(run, limits.search_timeout)

    @app.post("/items", status_code=201, response_model=schemas.AddResponse, openapi_extra=schemas.ITEMS_BODY,
              responses=schemas.ERRORS)
    async def add_items(request: Request, replace: bool = Query(False, description="replace items with these ids"),
                        key: str | None = Security(API_KEY)):
        """Add images (multipart files ``images``; optional ``ids`` and ``labels``, one per image)."""
        check_key(key)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        if kind != "multipart/form-data":
            raise HTTPException(415, "send multipart/form-data with one or more file fields 'images'")
        form = await request.form(max_files=limits.max_images, max_fields=2 * limits.max_images + 8)
        uploads = form.getlist("images")
        if not uploads or not all(isinstance(u, UploadFile) for u in uploads):
            raise HTTPException(400, "send the images in multipart file fields named 'images'")
        ids, labels = form.getlist("ids") or None, form.getlist("labels") or None
        for form_field, values in (("ids", ids), ("labels", labels)):
            if values is not None and len(values) != len(uploads):
                raise HTTPException(400, f"{len(uploads)} images but {len(values)} '{form_field}' fields; "
                                         "send one per image")
        data = [await u.read() for u in uploads]
        names = [u.filename or f"image {i + 1}" for i, u in enumerate(uploads)]

        def run():
            decoded = [decode_upload(raw, name, limits.max_pixels) for raw, name in zip(data, names)]
            pictures, kinds, files = zip(*decoded)  # files: without anything appended after each image's end
            added, replaced = service.add(list(pictures), list(kinds), list(files), ids=ids, labels=labels,
                                          replace=replace)
            return {"added": [{"id": i, "image_url": image_url(i)} for i in added], "replaced": replaced,
                    "items": len(service.index)}

        return await in_thread(run)

    @app.delete("/items/{item_id:path}", response_model=schemas.DeleteResponse, responses=schemas.ERRORS)
    async def delete_item(item_id: str, key: str | None = Security(API_KEY)):
        check_key(key)
        item = service.item_id(item_id)
        await in_thread(lambda: service.delete(item))
        return {"deleted": item, "items": len(service.index)}

    @get("/items/{item_id:path}/image", responses={200: {"content": {t: {} for t in MEDIA_TYPES.values()}},
                                                        **schemas.ERRORS})
    def item_image(item_id: str):
        index = service.index
        row = service.row_of(index, service.item_id(item_id, index))
        file = service.image_file(index, row)
        if file is None:
            raise HTTPException(404, f"item {item_id!r} has no image in this index's store")
        return FileResponse(file, media_type=MEDIA_TYPES[file.suffix],
                            headers={"Cache-Control": "public, max-age=31536000, immutable"})  # named by content

    @get("/items/{item_id:path}", response_model=schemas.Item, responses=schemas.ERRORS)
    def get_item(item_id: str):
        index = service.index
        item = service.item_id(item_id, index)
        row = service.row_of(index, item)
        path = index.source_path(row)
        return {"id": item, "label": index.label_text(row), "code": hex_code(index, row),
                "image_url": stored_image_url(item, path)}

    @get("/", include_in_schema=False)
    def page():
        return FileResponse(STATIC / "index.html", media_type="text/html", headers={"Content-Security-Policy": PAGE_CSP})

    @get("/docs", include_in_schema=False)
    def docs():  # Swagger UI from a Python package: no CDN, so the docs work offline too
        return FileResponse(STATIC / "docs.html", media_type="text/html", headers={"Content-Security-Policy": DOCS_CSP})

    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    app.mount("/docs-assets", StaticFiles(directory=Path(swagger_ui.__file__).parent / "static"), name="docs-assets")
    return app


def image_url(item_id) -> str:
    return f"/items/{quote(str(item_id), safe='')}/image"


def stored_image_url(item_id, path: str) -> str | None:
    """The image link of an item whose path is ``path``: only images in the index's store are served."""
    return image_url(item_id) if path.startswith(STORE + "/") else None


def _json_id(body: bytes):
    try:
        payload = json.loads(body or b"null")
    # ValueError: not JSON, not UTF-8, or an integer of over 4,300 digits; RecursionError: nested too deep
    except (ValueError, RecursionError):
        raise HTTPException(400, 'the body is not valid JSON; send {"id": ...}') from None
    if not isinstance(payload, dict) or "id" not in payload:
        raise HTTPException(400, 'send a JSON object with the query item\'s id: {"id": ...}')
    item_id = payload["id"]
    if isinstance(item_id, str) and not _is_utf8(item_id):  # JSON may escape lone surrogates (\ud800)
        raise HTTPException(400, "the id is not valid Unicode text (it holds a lone surrogate)")
    return item_id


def _is_utf8(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _error(status: int, message: str, headers: dict | None = None) -> JSONResponse:
    # the guard adds the security headers too, but a 500 is answered from outside it
    headers = {**{k.decode(): v.decode() for k, v in SECURITY_HEADERS}, **(headers or {})}
    return JSONResponse({"error": message, "status": status}, status_code=status, headers=headers)


def _add_error_handlers(app: FastAPI) -> None:
    statuses = {ItemNotFound: 404, Conflict: 409, NoEncoder: 409}

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, exc: HTTPException):
        message = exc.detail if isinstance(exc.detail, str) else json.dumps(exc.detail)
        if exc.status_code == 404 and message == "Not Found":
            message = f"no such endpoint: {request.method} {request.url.path}; the API is described at /docs"
        elif exc.status_code == 405:
            message = f"{request.method} is not allowed on {request.url.path}; see /docs"
        headers = dict(exc.headers or {})  # e.g. Allow on a 405; a GET route answers HEAD too
        if headers.get("Allow") == "GET":
            headers["Allow"] = "GET, HEAD"
        return _error(exc.status_code, message, headers)

    @app.exception_handler(RequestValidationError)
    async def invalid(request: Request, exc: RequestValidationError):
        first = exc.errors()[0]
        where = " ".join(str(part) for part in first.get("loc", ()) if part != "body")
        return _error(422, f"{where}: {first.get('msg', 'invalid value')}".replace("query ", "query parameter ", 1))

    @app.exception_handler(BadUpload)
    async def bad_upload(request: Request, exc: BadUpload):
        return _error(exc.status, exc.message)

    @app.exception_handler(SchnError)
    async def schn_error(request: Request, exc: SchnError):
        return _error(statuses.get(type(exc), 400), str(exc))

    @app.exception_handler(Exception)
    async def internal(request: Request, exc: Exception):
        log.exception("internal error on %s %s", request.method, request.url.path)
        return _error(500, "internal error of the service; see its log")
