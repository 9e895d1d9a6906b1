"""``schn serve``'s HTTP API on a tiny digits run: every endpoint, and every kind of bad request
answered by a 4xx JSON error (never a 500)."""
import io
import struct
import zipfile
import zlib

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from schn.errors import SchnError
from schn.index import HammingIndex
from schn.serve import ServeLimits, create_app

KEY = "s3cret"


@pytest.fixture
def client(idx):
    with TestClient(create_app(idx, api_key=KEY)) as c:
        yield c


def png(array, fmt="PNG") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(array, dtype=np.uint8)).save(buf, format=fmt)
    return buf.getvalue()


def stored_image(idx, item_id) -> bytes:
    index = HammingIndex.open(idx)
    return (idx / index.items([item_id])[0]["path"]).read_bytes()


def error(response, status):
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "status"} and body["status"] == status and "\n" not in body["error"]
    return body["error"]


def test_health_stats_and_openapi(client):
    health = client.get("/health").json()
    assert health["status"] == "ok" and health["items"] > 1000 and health["bits"] == 16
    client.post("/search", json={"id": "0"})
    stats = client.get("/stats").json()
    assert stats["items"] == health["items"] and stats["method"] == "schn" and stats["dataset"] == "digits"
    assert stats["requests"]["POST /search"]["count"] == 1 and stats["requests"]["POST /search"]["p50_ms"] > 0
    paths = client.get("/openapi.json").json()["paths"]
    assert {"/search", "/items", "/items/{item_id}", "/items/{item_id}/image", "/health", "/stats"} <= set(paths)
    assert set(paths["/search"]["post"]["requestBody"]["content"]) == {"application/json", "multipart/form-data"}
    docs = client.get("/docs").text
    assert "/docs-assets/swagger-ui-bundle.js" in docs and "cdn" not in docs.lower()  # works offline
    assert client.get("/docs-assets/swagger-ui-bundle.js").status_code == 200


def test_search_by_id_matches_the_index(client, idx):
    index = HammingIndex.open(idx)
    query = str(index.ids[7])
    body = client.post("/search?k=5", json={"id": query}).json()
    want = index.search_ids([query], 5)
    assert [r["id"] for r in body["results"]] == want.ids[0].tolist()
    assert [r["distance"] for r in body["results"]] == want.distances[0].tolist()
    assert body["query"] == {"id": query} and body["count"] == 5 and body["k"] == 5 and query not in [
        r["id"] for r in body["results"]]
    first = body["results"][0]
    assert first["label"] and first["image_url"] == f"/items/{first['id']}/image"
    image = client.get(first["image_url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert image.content == stored_image(idx, first["id"])


def test_search_by_uploaded_image_is_the_networks_code(client, idx):
    app_service = client.app.state.service
    data = stored_image(idx, "3")
    body = client.post("/search?k=4", files={"image": ("anything.bin", data, "application/octet-stream")}).json()
    code = app_service.encoder.encode([Image.open(io.BytesIO(data))])
    want = HammingIndex.open(idx).search(code, 4)
    assert [r["id"] for r in body["results"]] == want.ids[0].tolist()
    assert body["query"] == {"image": "anything.bin"}
    # the type is read from the bytes: a JPEG named .png is fine
    jpeg = png(Image.open(io.BytesIO(data)).convert("L"), fmt="JPEG")
    assert client.post("/search", files={"image": ("x.png", jpeg, "image/png")}).status_code == 200
    # any size: resized to the run's input size (8x8 here), as a data set image never needs
    for shape in [(1, 1), (300, 200, 3)]:
        assert client.post("/search", files={"image": ("any.png", png(np.full(shape, 200)), "image/png")}).status_code == 200


def test_radius_search_is_complete_and_limited(client, idx):
    index = HammingIndex.open(idx)
    query = str(index.ids[0])
    body = client.post("/search?radius=2", json={"id": query}).json()
    codes = np.unpackbits(np.asarray(index.codes), axis=1)
    dist = (codes != codes[0]).sum(1)
    assert body["count"] == int((dist <= 2).sum()) - 1 and body["radius"] == 2 and body["k"] is None
    assert all(r["distance"] <= 2 for r in body["results"]) and not body["truncated"]
    assert [r["distance"] for r in body["results"]] == sorted(r["distance"] for r in body["results"])
    everything = client.post(f"/search?radius={2**40}&limit=10000", json={"id": query}).json()
    assert everything["count"] == len(index) - 1  # a radius past the code length reaches every item
    small = client.post("/search?radius=2&limit=3", json={"id": query}).json()
    assert small["count"] == 3 and small["truncated"] is True


def test_add_get_and_delete_items_persist_before_the_answer(client, idx):
    image = np.zeros((8, 8), np.uint8)
    image[2:6, 3] = 255  # a "1"
    data = png(image)
    added = client.post("/items", files=[("images", ("one.png", data, "image/png"))],
                        data={"ids": ["new-1"], "labels": ["1"]}, headers={"X-API-Key": KEY})
    assert added.status_code == 201, added.text
    assert added.json()["added"] == [{"id": "new-1", "image_url": "/items/new-1/image"}]
    on_disk = HammingIndex.open(idx)  # saved before the response
    assert "new-1" in on_disk and on_disk.items(["new-1"])[0]["label"] == "1"
    item = client.get("/items/new-1").json()
    assert item["label"] == "1" and len(item["code"]) == 4 and client.get("/items/new-1/image").content == data
    found = client.post("/search?k=3", files={"image": ("q.png", data, "image/png")}).json()["results"]
    assert found[0]["distance"] == 0 and "new-1" in [r["id"] for r in found if r["distance"] == 0]

    again = client.post("/items", files=[("images", ("one.png", data, "image/png"))], data={"ids": ["new-1"]},
                        headers={"X-API-Key": KEY})
    assert "already in the index" in error(again, 409)
    replaced = client.post("/items?replace=true", files=[("images", ("one.png", data, "image/png"))],
                           data={"ids": ["new-1"], "labels": ["7"]}, headers={"X-API-Key": KEY}).json()
    assert replaced["replaced"] == 1 and client.get("/items/new-1").json()["label"] == "7"

    stored = idx / on_disk.items(["new-1"])[0]["path"]
    assert client.delete("/items/new-1", headers={"X-API-Key": KEY}).json()["deleted"] == "new-1"
    assert "new-1" not in HammingIndex.open(idx) and not stored.exists()  # nothing else referred to it
    error(client.get("/items/new-1"), 404)


def test_add_without_ids_names_items_by_content(client, idx):
    data = png(np.eye(8) * 255)
    body = client.post("/items", files=[("images", ("a.png", data, "image/png")),
                                        ("images", ("b.png", png(np.ones((8, 8)) * 90), "image/png"))],
                       headers={"X-API-Key": KEY}).json()
    ids = [a["id"] for a in body["added"]]
    assert len(set(ids)) == 2 and all(len(i) == 16 for i in ids)
    duplicate = client.post("/items", files=[("images", ("c.png", data, "image/png"))], headers={"X-API-Key": KEY})
    error(duplicate, 409)


def bomb_png(width: int, height: int) -> bytes:
    """A few dozen bytes whose header declares ``width x height`` pixels."""
    def chunk(kind, payload):
        return struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


@pytest.mark.parametrize("payload,status,words", [
    (b"hello, not an image", 415, "not an image"),
    (b"", 400, "empty"),
    ("truncated-png", 422, "truncated"),
    ("truncated-jpeg", 422, "truncated"),
    (bomb_png(100_000, 100_000), 413, "pixels"),
    (b"\x89PNG\r\n\x1a\n" + b"\0" * 40, 422, "corrupt"),
])
def test_bad_uploads_are_refused_with_4xx(client, payload, status, words):
    full = png(np.random.default_rng(0).integers(0, 255, (64, 64)))
    if payload == "truncated-png":
        payload = full[: len(full) // 2]
    elif payload == "truncated-jpeg":
        jpeg = png(np.random.default_rng(0).integers(0, 255, (64, 64)), fmt="JPEG")
        payload = jpeg[: len(jpeg) // 2]
    response = client.post("/search", files={"image": ("q.png", payload, "image/png")})
    assert words in error(response, status)


def test_bad_requests_are_4xx_json(client):
    assert "Content-Type" in error(client.post("/search", content=b"id=3", headers={"content-type": "text/plain"}), 415)
    assert "Content-Type was missing" in error(client.post("/search", content=b"x"), 415)
    assert "'image'" in error(client.post("/search", files={"picture": ("q.png", b"x", "image/png")}), 400)
    error(client.post("/search", files={"image": ("two\nlines.png", b"text", "image/png")}), 415)  # one line
    assert "valid JSON" in error(client.post("/search", content=b"{id:", headers={"content-type": "application/json"}), 400)
    assert '{"id"' in error(client.post("/search", json={"item": 3}), 400)
    assert "string or an integer" in error(client.post("/search", json={"id": [1]}), 400)
    assert "no item" in error(client.post("/search", json={"id": "no-such"}), 404)
    assert len(error(client.post("/search", json={"id": "x" * 5000}), 404)) < 200
    assert "NUL" in error(client.get("/items/%00"), 400)
    assert "query parameter k" in error(client.post("/search?k=0", json={"id": "1"}), 422)
    assert "k" in error(client.post("/search?k=5000", json={"id": "1"}), 422)
    assert "radius" in error(client.post("/search?radius=-1", json={"id": "1"}), 422)
    assert "k" in error(client.post("/search?k=ten", json={"id": "1"}), 422)
    error(client.get("/items/no-such"), 404)
    error(client.get("/items/no-such/image"), 404)
    assert "no such endpoint" in error(client.get("/nowhere"), 404)
    assert "not allowed" in error(client.put("/search"), 405)


def test_mutations_need_the_api_key(client):
    files = [("images", ("a.png", png(np.eye(8) * 255), "image/png"))]
    assert "X-API-Key" in error(client.post("/items", files=files), 401)
    assert "wrong" in error(client.post("/items", files=files, headers={"X-API-Key": "guess"}), 403)
    error(client.delete("/items/0"), 401)
    assert client.get("/health").json()["items"] == client.app.state.service.index.__len__()  # nothing changed
    error(client.delete("/items/no-such", headers={"X-API-Key": KEY}), 404)


def test_bad_item_batches(client):
    one = [("images", ("a.png", png(np.eye(8) * 255), "image/png"))]
    headers = {"X-API-Key": KEY}
    assert "one per image" in error(client.post("/items", files=one, data={"ids": ["a", "b"]}, headers=headers), 400)
    assert "unknown label 'cat'" in error(client.post("/items", files=one, data={"labels": ["cat"]}, headers=headers), 400)
    assert "'images'" in error(client.post("/items", data={"ids": ["a"]}, headers=headers), 415)
    assert "not an image" in error(client.post("/items", files=[("images", ("a.png", b"text", "image/png"))],
                                               headers=headers), 415)


def test_request_size_limit(idx):
    with TestClient(create_app(idx, limits=ServeLimits(max_request_bytes=4000))) as small:
        big = png(np.random.default_rng(1).integers(0, 255, (64, 64)))  # ~4 KB of noise
        assert "limit" in error(small.post("/search", files={"image": ("q.png", big * 2, "image/png")}), 413)
        chunks = (big[i:i + 500] for i in range(0, len(big) * 2, 500))  # no Content-Length: counted while read
        response = small.post("/search", content=chunks, headers={"content-type": "multipart/form-data; boundary=x"})
        assert "limit" in error(response, 413)
    with TestClient(create_app(idx, limits=ServeLimits(max_pixels=1000))) as few:
        assert "at most 1,000 pixels" in error(few.post("/search", files={"image": ("q.png", png(np.zeros((40, 40))),
                                                                                      "image/png")}), 413)


def test_images_are_served_only_from_the_index_store(tmp_path):
    outside = tmp_path / "secret.png"
    outside.write_bytes(png(np.zeros((4, 4))))
    folder = tmp_path / "idx"
    (folder / "images").mkdir(parents=True)
    (folder / "images" / "link.png").symlink_to(outside)
    (folder / "images" / "ok.png").write_bytes(png(np.ones((4, 4))))
    index = HammingIndex(8)
    paths = [str(outside), "../secret.png", "images/../../secret.png", "images/link.png", "images/ok.png", ""]
    index.add(np.arange(len(paths), dtype=np.uint8)[:, None], ids=list(range(len(paths))), paths=paths)
    index.save(folder)
    with TestClient(create_app(folder)) as client:
        for item in (0, 1, 2, 3, 5):
            error(client.get(f"/items/{item}/image"), 404)
        assert client.get("/items/4/image").status_code == 200
        assert client.get("/items/4").json()["image_url"] == "/items/4/image"
        # an index of integer ids and no run: search by id works, by image says why not
        body = client.post("/search?k=2", json={"id": 0}).json()
        assert [r["id"] for r in body["results"]] == [1, 2]
        assert "integer ids" in error(client.get("/items/abc"), 404)
        assert "cannot encode images" in error(client.post("/search", files={"image": ("q.png", png(np.eye(8)),
                                                                                          "image/png")}), 409)


def test_no_request_gets_a_500(client):
    """Seeded garbage at every endpoint: bodies, content types, paths, query strings, multipart."""
    rng = np.random.default_rng(0)
    good = png(np.eye(8) * 255)
    bodies = [b"", b"{}", b"null", b"[1,2]", b'{"id": {"x": 1}}', b'{"id": "0"', good, good[:30], b"\xff\xd8\xff" + b"\0" * 50,
              b"GIF89a" + bytes(20), b"BM" + bytes(60), b"RIFF\0\0\0\0WEBP" + bytes(30), bytes(rng.integers(0, 256, 300))]
    types = ["application/json", "multipart/form-data", "multipart/form-data; boundary=zz", "image/png", "text/plain",
             "application/x-www-form-urlencoded", ""]
    paths = ["/search", "/search?k=3&radius=1", "/search?k=-1", "/search?radius=9999999999999999999999", "/search?limit=0",
             "/items", "/items?replace=maybe", "/items/0", "/items/0/image", "/items/%ff", "/health", "/stats", "/",
             "/static/../../etc/passwd", "/static/app.js", "/docs"]
    statuses = []
    for _ in range(300):
        method = ["GET", "POST", "DELETE", "PUT"][rng.integers(4)]
        path, body, kind = (paths[rng.integers(len(paths))], bodies[rng.integers(len(bodies))],
                            types[rng.integers(len(types))])
        headers = {"content-type": kind, "x-api-key": KEY} if kind else {"x-api-key": KEY}
        response = client.request(method, path, content=body if method != "GET" else None, headers=headers)
        assert response.status_code < 500, (method, path, kind, body[:40], response.text)
        statuses.append(response.status_code)
    for files in ([("image", ("a.png", good, "image/png"))] * 3, [("images", ("a.png", good, "image/png"))] * 70,
                  {"image": ("a.png", good, "text/plain"), "k": (None, "3")}):
        for path in ("/search", "/items"):
            response = client.post(path, files=files, headers={"x-api-key": KEY})
            assert response.status_code < 500, (path, response.text)
    assert len(set(statuses)) > 5  # the garbage reached many different answers


def test_serve_refuses_a_milvus_location(tmp_path):
    from schn.errors import SchnError

    with pytest.raises(SchnError, match="local index folder"):
        create_app(tmp_path / "codes.db")


def multipart(parts, boundary=b"zz") -> bytes:
    """A multipart body from (field name, file name or None, bytes) parts, written by hand so
    that it can be wrong."""
    out = b""
    for name, filename, data in parts:
        disposition = b'form-data; name="' + name + b'"' + (b'; filename="' + filename + b'"' if filename else b"")
        out += b"--" + boundary + b"\r\nContent-Disposition: " + disposition + b"\r\n\r\n" + data + b"\r\n"
    return out + b"--" + boundary + b"--\r\n"


def test_hostile_bodies_get_4xx(client):
    """Issue 12, defect 4: deep JSON was a 500 (RecursionError); so were 5,000-digit numbers and
    lone surrogates. Every one of these is a 4xx JSON error."""
    deep = b"[" * 10_000 + b"]" * 10_000
    good = png(np.eye(8) * 255)
    json_bodies = [deep, b'{"id": ' + deep + b"}", b'{"id": {"a": ' * 5000 + b"1" + b"}" * 5001,
                   b'{"id": 1' + b"0" * 5000 + b"}", b'{"id": 1e999}', b'{"id": -1e999}', b'{"id": NaN}',
                   b'{"id": "\xff\xfe"}', b"\xef\xbb\xbf{}", b'{"id": "\\ud800"}', b'{"id": "a\\u0000"}',
                   b'{"id": 99999999999999999999999999}', b'{"id": true}', b'{"id": null}', b"\xff" * 100]
    for body in json_bodies:
        response = client.post("/search", content=body, headers={"content-type": "application/json"})
        assert 400 <= response.status_code < 500, (body[:30], response.text)
        error(response, response.status_code)
    image = [(b"image", b"a.png", good)]
    items = [(b"images", b"a.png", good), (b"ids", None, b"\xff\xfe"), (b"labels", None, b"\xc3")]
    multiparts = [(multipart(image, b"zz"), "multipart/form-data; boundary=yy"),  # another boundary
                  (multipart(image), "multipart/form-data"),  # none declared
                  (multipart(image), "multipart/form-data; boundary="),
                  (multipart(image), 'multipart/form-data; boundary="'),
                  (multipart(image)[:-10], "multipart/form-data; boundary=zz"),  # cut short
                  (multipart(image).replace(b"\r\n", b"\n"), "multipart/form-data; boundary=zz"),
                  (multipart([(b"image", b"\xff\xfe.png", good)]), "multipart/form-data; boundary=zz"),
                  (multipart([(b"\xff", b"a.png", good)]), "multipart/form-data; boundary=zz"),
                  (multipart(items), "multipart/form-data; boundary=zz"),
                  (b"--zz\r\n" * 20_000, "multipart/form-data; boundary=zz")]
    for body, kind in multiparts:
        for path in ("/search", "/items"):
            response = client.post(path, content=body, headers={"content-type": kind, "x-api-key": KEY})
            assert response.status_code < 500, (path, kind, body[:60], response.text)  # odd names are fine
            if response.status_code >= 400:
                error(response, response.status_code)
    for path in ("/items/" + "9" * 5000, "/items/%ed%a0%80", "/items/%ff/image", "/search?k=" + "9" * 5000,
                 "/search?radius=" + "9" * 5000, "/search?k=1e3", "/search?%ff=%fe&k=%00"):
        method = "POST" if path.startswith("/search") else "GET"
        response = client.request(method, path, json={"id": "no-such"})
        assert 400 <= response.status_code < 500, (path, response.text)
    big = client.post("/search", content=b"{}", headers={"content-type": "application/json",
                                                        "content-length": "9" * 5000})
    assert "limit" in error(big, 413)


GET_ROUTES = ["/health", "/stats", "/items/0", "/items/0/image", "/", "/docs", "/openapi.json",
              "/docs-assets/swagger-ui.css", "/static/app.js"]


def test_head_on_every_get_route(client):
    """Issue 12, defect 13: HEAD on the GET routes was a 405. It answers GET's status and headers, no body."""
    for path in GET_ROUTES:
        got, head = client.get(path), client.head(path)
        assert head.status_code == got.status_code == 200, (path, head.text)
        assert head.content == b"" and head.headers["content-type"] == got.headers["content-type"], path
    missing = client.head("/items/no-such")
    assert missing.status_code == 404 and missing.content == b"" and missing.headers["content-type"] == "application/json"
    assert client.put("/health").headers["allow"] == "GET, HEAD"
    assert all("head" not in ops for ops in client.get("/openapi.json").json()["paths"].values())


def test_every_response_has_security_headers(client):
    """Issue 12, defect 13: JSON answers and /docs had no nosniff and no Content-Security-Policy."""
    responses = {path: client.get(path) for path in GET_ROUTES + ["/nowhere", "/items/no-such"]}
    responses["POST /search"] = client.post("/search", json={"id": "0"})
    responses["POST /search (bad)"] = client.post("/search", content=b"[" * 10_000, headers={"content-type":
                                                                                             "application/json"})
    for name, response in responses.items():
        assert response.headers["x-content-type-options"] == "nosniff", name
        policy = response.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in policy, name
    assert responses["/items/0"].headers["content-security-policy"].startswith("default-src 'none'")
    docs = responses["/docs"]
    # Swagger UI runs from this service's own files, with no inline script allowed
    assert "script-src" not in docs.headers["content-security-policy"] and "default-src 'self'" in docs.headers[
        "content-security-policy"]
    assert "<script>" not in docs.text and '/static/docs.js' in docs.text
    assert client.get("/static/docs.js").status_code == 200


def test_refused_adds_leave_the_image_store_unchanged(client, idx, monkeypatch):
    """Issue 12, defect 10: a refused POST /items (unknown label, duplicate id, a bad replace, a
    commit that fails) left its images in IDX/images/, referenced by nothing."""
    headers = {"X-API-Key": KEY}
    before = sorted((idx / "images").iterdir())

    def add(seed, path="/items", **data):
        image = png(np.random.default_rng(seed).integers(0, 255, (8, 8)))  # new content: a new file
        return client.post(path, files=[("images", ("a.png", image, "image/png"))], data=data, headers=headers)

    assert "unknown label" in error(add(1, labels=["cat"]), 400)
    assert "already in the index" in error(add(2, ids=["0"]), 409)
    assert "unknown label" in error(add(3, "/items?replace=true", ids=["0"], labels=["cat"]), 400)
    assert "NUL" in error(add(4, ids=["a\0b"]), 400)

    def failing_save(self, path=None):
        raise SchnError("the disk is full (simulated)")

    monkeypatch.setattr(HammingIndex, "save", failing_save)
    assert "disk is full" in error(add(5, ids=["new"]), 409)
    monkeypatch.undo()
    assert sorted((idx / "images").iterdir()) == before
    assert add(6, ids=["new"]).status_code == 201  # a good request still stores its image
    assert len(list((idx / "images").iterdir())) == len(before) + 1


def test_an_upload_is_stored_without_what_was_appended_to_it(client, idx):
    """Issue 12, defect 13: a PNG with a zip appended was stored and served byte for byte. The
    trailer is cut off at the image's end; the image itself is kept exactly (same bytes, same pixels)."""
    pixels = np.random.default_rng(2).integers(0, 255, (8, 8, 3))
    polyglots = {}
    for fmt in ("PNG", "JPEG", "GIF", "WEBP", "BMP"):
        image = png(pixels, fmt=fmt)
        zipped = io.BytesIO()
        with zipfile.ZipFile(zipped, "w") as archive:
            archive.writestr("evil.html", "<script>alert(1)</script>")
        polyglots[fmt] = image, image + zipped.getvalue()
    files = [("images", (f"{fmt}.img", joined, "application/octet-stream")) for fmt, (_, joined) in polyglots.items()]
    added = client.post("/items", files=files, data={"ids": list(polyglots)}, headers={"X-API-Key": KEY})
    assert added.status_code == 201, added.text
    for fmt, (image, _) in polyglots.items():
        served = client.get(f"/items/{fmt}/image").content
        assert served == image and b"PK\x03\x04" not in served, fmt
        assert stored_image(idx, fmt) == image
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(served))), np.asarray(Image.open(io.BytesIO(image))))
