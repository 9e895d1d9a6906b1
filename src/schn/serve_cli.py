"""``schn serve IDX``: the search service and its web page on uvicorn (imported only when run)."""
from __future__ import annotations

import os

from .errors import SchnError


def cmd_serve(args) -> int:
    import faiss
    import torch
    import uvicorn

    from .serve import ServeLimits, create_app

    # Requests run in parallel threads; OpenMP teams per request would only fight over the cores
    # (measured: a 0.2 ms FAISS scan took ~30 ms when its threads waited on a busy core).
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    api_key = os.environ.get("SCHN_API_KEY") if args.api_key is None else args.api_key
    if api_key == "":
        raise SchnError("the API key is empty; pass a non-empty --api-key or SCHN_API_KEY, or none at all")
    limits = ServeLimits(max_request_bytes=int(args.max_upload_mb * 1024 * 1024), max_pixels=args.max_pixels,
                         search_timeout=args.timeout, body_timeout=args.timeout,
                         **({"worker_threads": args.worker_threads} if args.worker_threads else {}))
    app = create_app(args.index, args.run, api_key=api_key, limits=limits, device=args.device,
                     searcher=args.searcher, verify=not args.no_verify)
    service = app.state.service
    print(f"serving {args.index} ({len(service.index)} items, {service.index.bits}-bit codes) on "
          f"http://{args.host}:{args.port}/  (API: /docs; mutations {'need X-API-Key' if api_key else 'are open'})"
          + ("" if service.encoder else f"\nimage search is off: {service.encoder_error}"), flush=True)
    uvicorn.run(app, host=args.host, port=args.port, log_level=args.log_level, timeout_keep_alive=args.timeout)
    return 0


def add_serve_command(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP search service and web page over a local index folder")
    p.add_argument("index", help="index folder built by `schn index build` (--store-images to show images)")
    p.add_argument("--run", default=None, help="the run that built the index, if it moved")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="required in X-API-Key by POST/DELETE /items (default: $SCHN_API_KEY)")
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="largest request body (default 16 MiB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (default 40M)")
    p.add_argument("--timeout", type=float, default=30.0, help="seconds for a search, and for a silent client")
    p.add_argument("--searcher", default="auto", help="auto (default), mih, faiss or numpy")
    p.add_argument("--worker-threads", type=int, default=None,
                   help="searches and uploads handled at once (default twice the cores)")
    p.add_argument("--threads", type=int, default=1, help="FAISS and torch threads per request (default 1)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-verify", action="store_true", help="skip the checksum check of the index files at start")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    p.set_defaults(func=cmd_serve)
