"""Property-based fuzzing of a live ``schn serve --api-key``: every operation of its own
``/openapi.json``, valid and invalid inputs generated from the schema by schemathesis (seeded,
bounded), and raw hostile requests over a socket. No input may get a 5xx; a 2xx answer must match
its declared response schema; every error is a JSON ``{"error", "status"}`` body."""
import itertools
import shutil
import socket

import httpx2 as httpx
import pytest
import schemathesis
from conftest import schn_serve
from hypothesis import HealthCheck, given, settings
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error, response_schema_conformance

KEY = "fuzz-key"
EXAMPLES = 100  # per operation and generation mode (valid and invalid inputs): ~15 s on 2 cores


@pytest.fixture(scope="module")
def live(stored_index, tmp_path_factory):
    """`schn serve --api-key KEY` over a copy of the stored index, for the whole module."""
    idx = shutil.copytree(stored_index, tmp_path_factory.mktemp("fuzz") / "idx")
    with schn_serve(idx, "--api-key", KEY, "--timeout", "5") as (server, url, port):
        yield url, port
        assert server.poll() is None, "the service died under fuzzing"


@pytest.fixture(scope="module")
def api_schema(live):
    return schemathesis.openapi.from_url(live[0] + "/openapi.json")


@pytest.mark.parametrize("mode", [GenerationMode.POSITIVE, GenerationMode.NEGATIVE])
def test_no_input_from_the_schema_gets_a_server_error(live, api_schema, mode):
    """Every operation of the service's own schema, with inputs that follow it (positive) and that
    break it (negative); the API key on every other call, so both the key check and the work behind
    it are fuzzed. (Driven through Hypothesis directly: schemathesis' lazy pytest loader does not run
    on pytest 9.)"""
    operations = [result.ok() for result in api_schema.get_all_operations()]
    assert {op.label for op in operations} >= {"GET /health", "GET /stats", "POST /search", "POST /items",
                                              "DELETE /items/{item_id}", "GET /items/{item_id}",
                                              "GET /items/{item_id}/image"}
    fuzzed = {op.label: fuzz(op, mode, live[0]) for op in operations}
    # GET /health has no input to break, and any string is a valid {item_id}: the bodies and queries are
    wanted = fuzzed if mode is GenerationMode.POSITIVE else {k: fuzzed[k] for k in ("POST /search", "POST /items")}
    assert all(wanted.values()), fuzzed


def fuzz(operation, mode, url) -> int:
    """Runs up to EXAMPLES generated requests against ``operation``; returns how many ran."""
    calls = itertools.count()

    @settings(max_examples=EXAMPLES, derandomize=True, database=None, deadline=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case):
        headers = {"X-API-Key": KEY} if next(calls) % 2 else {}
        response = case.call(base_url=url, headers=headers, timeout=30)
        case.validate_response(response, checks=[not_a_server_error, response_schema_conformance], headers=headers)
        if response.status_code >= 400:
            body = response.json()
            assert set(body) == {"error", "status"} and body["status"] == response.status_code, body

    try:
        run()
    except Unsatisfiable:  # nothing to generate in this mode
        if mode is GenerationMode.POSITIVE:
            raise
    return next(calls)


def raw(port: int, request: bytes) -> bytes:
    """Sends ``request`` as it is and returns the server's first answer (read to its Content-Length;
    no half-close, which asyncio servers take as the end of the connection)."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
        conn.sendall(request)
        answer = b""
        while not _complete(answer) and (chunk := conn.recv(65536)):
            answer += chunk
    return answer


def _complete(answer: bytes) -> bool:
    head, found, body = answer.partition(b"\r\n\r\n")
    lengths = [line.split(b":")[1] for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:")]
    return bool(found and lengths) and len(body) >= int(lengths[0])


HOSTILE = [
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 20000\r\n\r\n"
    + b"[" * 10_000 + b"]" * 10_000,
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 5009\r\n\r\n"
    + b'{"id": 1' + b"0" * 5000 + b"}",
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 12\r\n\r\n"
    + b'{"id": "\xff\xfe"}',
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=\xff\xfe\r\n"
    b"Content-Length: 10\r\n\r\n--\xff\xfe--\r\n\r\n",
    b"POST /items HTTP/1.1\r\nHost: x\r\nX-API-Key: " + KEY.encode() + b"\r\n"
    b"Content-Type: multipart/form-data; boundary=a\r\nContent-Length: 30\r\n\r\n--b\r\n\r\nnot the boundary--\r\n",
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: " + b"9" * 5000
    + b"\r\n\r\n{}",
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"zz\r\n{}\r\n0\r\n\r\n",
    b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\nContent-Length: 3\r\n\r\n{}",
    b"GET /items/%ff%fe%00 HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /items/\xff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET /search?k=" + b"9" * 5000 + b"&radius=%ff HTTP/1.1\r\nHost: x\r\n\r\n",
    b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * 70_000,  # headers over h11's 16 KiB, not yet ended
    b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),  # a TLS hello to a plain HTTP port
    b"GARBAGE\r\n\r\n",
]


@pytest.mark.parametrize("request_bytes", HOSTILE, ids=range(len(HOSTILE)))
def test_hostile_raw_requests_get_4xx(live, request_bytes):
    """Deep JSON, huge numbers, invalid UTF-8 (in bodies, headers, paths), wrong multipart
    boundaries, bad framing, oversized headers: a 4xx JSON answer each, never a 5xx, and the
    service goes on serving."""
    url, port = live
    answer = raw(port, request_bytes)
    status_line, _, rest = answer.partition(b"\r\n")
    status = int(status_line.split(b" ")[1])
    assert 400 <= status < 500, answer[:300]
    body = rest.partition(b"\r\n\r\n")[2]
    assert b'"error"' in body and b'"status": %d' % status in body.replace(b'":', b'": ').replace(b'":  ', b'": '), answer
    assert httpx.get(url + "/health", timeout=5).status_code == 200
