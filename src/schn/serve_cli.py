"""``schn serve IDX``: the search service and its web page on uvicorn (imported only when run).

Every option is checked, and the address bound, before the index and the model load: a mistake is
one ``error:`` line and exit 2 within a second, never a traceback after "serving".
"""
from __future__ import annotations

import os
import socket
from pathlib import Path

from .bounds import check_range
from .errors import SchnError

LOG_LEVELS = ("critical", "error", "warning", "info", "debug", "trace")  # uvicorn's
DAY = 86_400.0


def cmd_serve(args) -> int:
    _check_options(args)
    api_key = os.environ.get("SCHN_API_KEY") if args.api_key is None else args.api_key
    _check_api_key(api_key)
    sockets = listen(args.host, args.port)  # before the slow part: a port in use is said at once
    try:
        return _serve(args, api_key, sockets)
    finally:
        for sock in sockets:
            sock.close()


def _serve(args, api_key: str | None, sockets: list[socket.socket]) -> int:
    import faiss
    import torch
    import uvicorn

    from .serve import ServeLimits, create_app
    from .serve.guard import guarded_protocol

    _check_device(args.device)
    _check_searcher(args.searcher)
    # Requests run in parallel threads; OpenMP teams per request would only fight over the cores
    # (measured: a 0.2 ms FAISS scan took ~30 ms when its threads waited on a busy core).
    faiss.omp_set_num_threads(args.threads)
    torch.set_num_threads(args.threads)

    limits = ServeLimits(max_request_bytes=max(1, int(args.max_upload_mb * 1024 * 1024)), max_pixels=args.max_pixels,
                         search_timeout=args.timeout, body_timeout=args.timeout,
                         **({"worker_threads": args.worker_threads} if args.worker_threads else {}))
    app = create_app(args.index, args.run, api_key=api_key, limits=limits, device=args.device,
                     searcher=args.searcher, verify=not args.no_verify)
    service = app.state.service
    host = f"[{args.host}]" if ":" in args.host else args.host
    print(f"serving {args.index} ({len(service.index)} items, {service.index.bits}-bit codes) on "
          f"http://{host}:{args.port}/  (API: /docs; mutations {'need X-API-Key' if api_key else 'are open'})"
          + ("" if service.encoder else f"\nimage search is off: {service.encoder_error}"), flush=True)
    config = uvicorn.Config(app, host=args.host, port=args.port, log_level=args.log_level,
                            timeout_keep_alive=args.keep_alive,
                            http=guarded_protocol(header_timeout=args.timeout, max_connections=args.max_connections))
    uvicorn.Server(config).run(sockets=sockets)
    return 0


def _check_options(args) -> None:
    """The options that a later request would trip over, refused with what to pass instead (the
    searcher and the device are checked once torch is imported, still before the index loads)."""
    check_range("--port", args.port, 1, 65535)
    if not args.host.strip() or args.host != args.host.strip():
        raise SchnError(f"--host {args.host!r} is not an address; pass e.g. 127.0.0.1 (this machine) or 0.0.0.0 (all)")
    check_range("--max-upload-mb", args.max_upload_mb, 0, above=True)
    for option, seconds in (("--timeout", args.timeout), ("--keep-alive", args.keep_alive)):
        check_range(option, seconds, 0, DAY, above=True)
    for option, count in (("--max-pixels", args.max_pixels), ("--threads", args.threads),
                          ("--max-connections", args.max_connections), ("--worker-threads", args.worker_threads)):
        if count is not None:
            check_range(option, count, 1)
    if args.log_level not in LOG_LEVELS:
        raise SchnError(f"--log-level {args.log_level!r} is not a level; pass one of {', '.join(LOG_LEVELS)}")
    if args.run is not None and not (Path(args.run) / "checkpoint.pt").is_file():
        raise SchnError(f"--run {args.run} is not a run folder (it has no checkpoint.pt)")


def _check_api_key(api_key: str | None) -> None:
    if api_key is None:
        return
    if api_key == "":
        raise SchnError("the API key is empty; pass a non-empty --api-key or SCHN_API_KEY, or none at all")
    if not (api_key.isascii() and api_key.isprintable()) or api_key != api_key.strip():
        raise SchnError("the API key must be printable ASCII without spaces at its ends (clients send it in a header)")


def _check_searcher(name: str) -> None:
    from .index import list_searchers  # imports torch: checked once the service's imports are in

    if name not in list_searchers():
        raise SchnError(f"--searcher {name!r} is not a searcher; pass one of {', '.join(list_searchers())}")


def _check_device(name: str | None) -> None:
    import torch

    if name is None or name == "auto":
        return
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise SchnError(f"--device {name!r} is not a device; pass auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SchnError(f"--device {name} but no CUDA device is available; pass --device cpu")


def listen(host: str, port: int) -> list[socket.socket]:
    """Listening sockets on every address of ``host`` (as uvicorn would bind them), or a
    :class:`SchnError` saying why not: an address in use, not this machine's, not resolvable."""
    try:
        addresses = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise SchnError(f"--host {host}: {exc.strerror}; pass an address or name of this machine") from None
    sockets = []
    try:
        for family, kind, proto, _, address in dict.fromkeys(addresses):
            sock = socket.socket(family, kind, proto)
            sockets.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # a restart may rebind at once
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            sock.bind(address)
            sock.listen(2048)  # claimed now; connections wait in the backlog while the index loads
    except OSError as exc:
        for sock in sockets:
            sock.close()
        raise SchnError(f"cannot listen on {host}:{port}: {exc.strerror}; stop what uses it or pass another "
                        "--port or --host") from None
    return sockets


def add_serve_command(sub) -> None:
    p = sub.add_parser("serve", help="an HTTP search service and web page over a local index folder")
    p.add_argument("index", help="index folder built by `schn index build` (--store-images to show images)")
    p.add_argument("--run", default=None, help="the run that built the index, if it moved")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1: this machine only)")
    p.add_argument("--port", type=int, default=8000)
    p.add_argument("--api-key", default=None, help="required in X-API-Key by POST/DELETE /items (default: $SCHN_API_KEY)")
    p.add_argument("--max-upload-mb", type=float, default=16.0, help="largest request body (default 16 MiB)")
    p.add_argument("--max-pixels", type=int, default=40_000_000, help="largest image, width x height (default 40M)")
    p.add_argument("--timeout", type=float, default=30.0,
                   help="seconds for a search, for a request's headers, and for a silent client (default 30)")
    p.add_argument("--keep-alive", type=float, default=5.0,
                   help="seconds an idle connection stays open between requests (default 5)")
    p.add_argument("--max-connections", type=int, default=512,
                   help="connections served at once; a request on one more gets a 503 (default 512)")
    p.add_argument("--searcher", default="auto", help="auto (default), mih, faiss or numpy")
    p.add_argument("--worker-threads", type=int, default=None,
                   help="searches and uploads handled at once (default twice the cores)")
    p.add_argument("--threads", type=int, default=1, help="FAISS and torch threads per request (default 1)")
    p.add_argument("--device", default=None)
    p.add_argument("--no-verify", action="store_true", help="skip the checksum check of the index files at start")
    p.add_argument("--log-level", default="warning", help="uvicorn's log level (default warning)")
    p.set_defaults(func=cmd_serve)
