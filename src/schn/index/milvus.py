"""The ``milvus`` index backend: the :class:`CodeIndex` API on a Milvus collection.

A location is a Milvus Lite file (``codes.db``) or a server URI (``http://host:19530``); the same
code serves both. One collection holds one index:

    id     INT64 or VARCHAR(1024) primary key (the id kind is fixed when the collection is created)
    code   BINARY_VECTOR, dim = 8 * ceil(bits/8) (the zero padding bits leave distances unchanged)
    label  VARCHAR: positive class indices joined by "," ("" when none)
    path   VARCHAR(4096): source path ("" when none)

The manifest (format, bits, id kind, class names, info) is JSON in the collection description,
which cannot be changed later (Milvus Lite has no alter_collection_properties). The collection is
therefore created at the first ``add``/``upsert`` (or at ``save``), when the id kind and, from the
first labels, the class names are known.

Results equal the local index's exactly: Milvus returns the k smallest distances but breaks ties
at the k-th distance arbitrarily, so we fetch more until the tie group is complete, then order by
(distance, id). Milvus caps every result (search limit, query limit + offset) at 16384 rows; where
that is not enough we fetch one distance at a time with range searches. ``BIN_IVF_FLAT`` (servers
only) is searched with nprobe = nlist, which makes its k-NN search exact; its range search is not
(it misses items), so radius searches there are k-NN searches with a growing limit.

A server location may carry credentials (``http://USER:PASSWORD@host:19530``); messages and
``describe()`` show the password as ``***``. Reads use "Session" consistency (see READ_CONSISTENCY).
"""
from __future__ import annotations

import json
import logging
import re
import warnings
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import numpy as np

from .. import codes as codes_mod
from ..errors import SchnError
from . import ids as ids_mod
from .base import INDEX_BACKENDS, MILVUS_PREFIXES, CodeIndex, Neighbors, label_text

FORMAT = "schn-milvus"
FORMAT_VERSION = 1
DEFAULT_COLLECTION = "schn_codes"
INDEX_TYPES = ("BIN_FLAT", "BIN_IVF_FLAT")
MAX_BITS = 32768  # Milvus' largest vector dimension
MAX_NLIST = 65536  # Milvus' bound on nlist (and on nprobe, which searches set to nlist)
MAX_ROWS = 16384  # Milvus' cap on search limit and on query limit + offset
ID_BYTES, PATH_BYTES, LABEL_CHARS = 1024, 4096, 65535
INSERT_BATCH = 10_000
INSERT_BYTES = 16 << 20  # a Milvus server refuses gRPC messages over 64 MiB (Lite has no such limit)
# etcd, where a server keeps the description, refuses requests over 1.5 MiB; Lite stores anything
MAX_MANIFEST_BYTES = 1 << 20
LOOKUP_BATCH = 2000  # ids per `id in [...]` query (always with an explicit limit: Lite truncates otherwise)
INSTALL_HINT = "the Milvus backend needs pymilvus and milvus-lite: pip install 'schn[milvus]'"
# Reads see every write of this process (pymilvus sends the last write's timestamp) and whatever
# else the server has applied. "Strong" waits for a Milvus server's next time tick (~200 ms) on
# every read, which made each search and each step of the id bisection cost a quarter of a second.
READ_CONSISTENCY = "Session"
CONNECT_TIMEOUT_S = 10


def _pymilvus(local: bool):
    try:
        with warnings.catch_warnings():  # milvus_lite imports the deprecated pkg_resources
            warnings.simplefilter("ignore")
            import pymilvus

            if local:
                import milvus_lite  # noqa: F401  (pymilvus starts Lite through it)
    except ImportError:
        raise SchnError(INSTALL_HINT) from None
    return pymilvus


def shown_uri(uri: str) -> str:
    """A location as messages and ``describe()`` show it: a password in a server URI becomes ***."""
    parts = urlsplit(uri) if uri.startswith(MILVUS_PREFIXES) else None
    if parts is None or parts.password is None:
        return uri
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{parts.netloc.rpartition('@')[2]}"))


@contextmanager
def _quiet_pymilvus():
    """pymilvus logs a failed connection at ERROR before raising; the SchnError says it once."""
    loggers = [logging.getLogger(name) for name in ("pymilvus", "pymilvus.milvus_client")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


def _connect(uri: str, collection: str, must_exist: bool):
    local = not uri.startswith(MILVUS_PREFIXES)
    if local and must_exist and not Path(uri).is_file():
        raise SchnError(_missing(uri, collection))
    if local:
        Path(uri).parent.mkdir(parents=True, exist_ok=True)
    pymilvus = _pymilvus(local)
    import grpc  # a dependency of pymilvus; a refused login arrives as a bare gRPC error

    try:
        with _quiet_pymilvus():
            return pymilvus.MilvusClient(uri=uri, timeout=CONNECT_TIMEOUT_S)
    except (pymilvus.MilvusException, grpc.RpcError) as exc:
        reason = exc.message if isinstance(exc, pymilvus.MilvusException) else exc.details()
        hint = ("is it a Milvus Lite file, not open in another process?" if local else
                "check the URI, the server, and the credentials (http://USER:PASSWORD@host:port)")
        raise SchnError(f"cannot connect to Milvus at {shown_uri(uri)} ({reason}); {hint}") from None


def _missing(uri, collection) -> str:
    return (f"no collection {collection} at {shown_uri(uri)}; "
            f"build one with `schn index build RUN -o {shown_uri(uri)} --collection {collection}`")


def _read_manifest(client, uri: str, collection: str) -> dict:
    try:
        manifest = json.loads(client.describe_collection(collection).get("description") or "")
    except json.JSONDecodeError:
        manifest = None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SchnError(f"collection {collection} at {shown_uri(uri)} is not a schn index (no {FORMAT} manifest in its "
                        "description); choose another collection")
    if manifest.get("format_version", 0) > FORMAT_VERSION:
        raise SchnError(f"collection {collection} at {shown_uri(uri)} was written by a newer schn; upgrade schn")
    return manifest


def _literal(item_id) -> str:
    """An id as a Milvus expression literal (Lite decodes only \\\\ and \\" in strings)."""
    if isinstance(item_id, str):
        return '"' + item_id.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return str(int(item_id))


def _row_bytes(row: dict) -> int:
    """About what a row adds to an insert message."""
    text = (row["id"] if isinstance(row["id"], str) else "") + row["label"] + row["path"]
    return 16 + len(row["code"]) + len(text.encode())


def _id_array(values, kind) -> np.ndarray:
    return np.array(values, dtype=str) if kind == "str" else np.array(values, dtype=np.int64)


class MilvusIndex(CodeIndex):
    """Packed binary codes in a Milvus collection; exact k-NN and radius search (see the module docstring)."""

    def __init__(self, client, uri: str, collection: str, bits: int, *, id_kind=None, class_names=None,
                 info=None, index_type="BIN_FLAT", nlist=128, created=False, overwrite=False):
        self.client, self.uri, self.collection = client, uri, collection
        self.bits, self.id_kind = int(bits), id_kind
        self.class_names = list(class_names) if class_names is not None else None
        self.info = dict(info or {})
        self.index_type, self.nlist, self._created = index_type, int(nlist), created
        self._lite, self._overwrite = not uri.startswith(MILVUS_PREFIXES), overwrite
        self._deleted = False  # a delete since the last read (see _consistency)

    # ---- collection ---------------------------------------------------------------------
    def manifest(self) -> dict:
        return {"format": FORMAT, "format_version": FORMAT_VERSION, "bits": self.bits,
                "bytes_per_code": codes_mod.packed_width(self.bits), "id_kind": self.id_kind or "int",
                "class_names": self.class_names, "index_type": self.index_type, "nlist": self.nlist, "info": self.info}

    def _ensure_collection(self, kind: str) -> None:
        if self._created:
            return
        pymilvus = _pymilvus(False)
        self.id_kind = self.id_kind or kind
        description = json.dumps(self.manifest(), default=str)
        if len(description.encode()) > MAX_MANIFEST_BYTES:
            raise SchnError(f"the index manifest ({len(description.encode()):,} bytes, mostly class names) is larger "
                            f"than Milvus stores ({MAX_MANIFEST_BYTES:,}); use fewer or shorter class names")
        if self.client.has_collection(self.collection):
            if not self._overwrite:
                raise SchnError(f"collection {self.collection} at {shown_uri(self.uri)} was created meanwhile; open it, or "
                                "choose another collection name")
            _read_manifest(self.client, self.uri, self.collection)  # only ever replace a schn index
            self.client.drop_collection(self.collection)
            # pymilvus caches schemas by collection name and would pack rows for the dropped one
            getattr(self.client._get_connection(), "schema_cache", {}).pop(self.collection, None)
        schema = pymilvus.MilvusClient.create_schema(auto_id=False, enable_dynamic_field=False, description=description)
        if self.id_kind == "int":
            schema.add_field("id", pymilvus.DataType.INT64, is_primary=True)
        else:
            schema.add_field("id", pymilvus.DataType.VARCHAR, is_primary=True, max_length=ID_BYTES)
        schema.add_field("code", pymilvus.DataType.BINARY_VECTOR, dim=8 * codes_mod.packed_width(self.bits))
        schema.add_field("label", pymilvus.DataType.VARCHAR, max_length=LABEL_CHARS)
        schema.add_field("path", pymilvus.DataType.VARCHAR, max_length=PATH_BYTES)
        index_params = self.client.prepare_index_params()
        index_params.add_index(field_name="code", index_type=self.index_type, metric_type="HAMMING",
                               params={"nlist": self.nlist} if self.index_type == "BIN_IVF_FLAT" else {})
        try:
            self.client.create_collection(self.collection, schema=schema, index_params=index_params,
                                          consistency_level="Strong")
        except pymilvus.MilvusException as exc:
            raise SchnError(f"Milvus at {shown_uri(self.uri)} cannot create collection {self.collection} "
                            f"({exc.message}); check the server's limits and logs") from None
        self._created = True
        if self.client.describe_collection(self.collection).get("description") != description:
            raise SchnError(f"Milvus at {shown_uri(self.uri)} shortened the manifest of collection {self.collection} "
                            f"({len(description)} characters, mostly class names); use fewer or shorter class names")

    def _consistency(self) -> str:
        """READ_CONSISTENCY, but "Strong" for the first read after a delete: Milvus 2.3 servers
        answer a delete without its timestamp, so a "Session" read could still see the rows."""
        level, self._deleted = ("Strong" if self._deleted else READ_CONSISTENCY), False
        return level

    def _query(self, expr: str, fields, limit=None) -> list:
        return self.client.query(self.collection, filter=expr, output_fields=list(fields), limit=limit,
                                 consistency_level=self._consistency())

    def _count(self, expr: str = "") -> int:
        return int(self._query(expr, ["count(*)"])[0]["count(*)"]) if self._created else 0

    def _fetch(self, ids: list, fields=("id",)) -> dict:
        """Stored rows of the given ids (those present), by id."""
        found = {}
        unique = [i for i in dict.fromkeys(ids) if self._storable(i)]  # the others cannot be stored
        for start in range(0, len(unique) if self._created else 0, LOOKUP_BATCH):
            chunk = unique[start:start + LOOKUP_BATCH]
            for row in self._query(f"id in [{','.join(map(_literal, chunk))}]", {"id", *fields}, len(chunk)):
                found[row["id"]] = row
        return found

    def _present(self, ids: list, fields=("id",)) -> list:
        rows = self._fetch(ids, fields)
        absent = [i for i in ids if i not in rows]
        if absent:
            raise SchnError(f"id {absent[0]!r} is not in the index ({len(absent)} of {len(ids)} ids missing)")
        return [rows[i] for i in ids]

    def _max_int_id(self) -> int:
        """Largest stored int id, by bisection on counts (Milvus has no max())."""
        low, high = -(1 << 63), 1 << 63  # count(id >= low) > 0, count(id >= high) == 0
        while high - low > 1:
            mid = (low + high) // 2
            low, high = (mid, high) if self._count(f"id >= {mid}") else (low, mid)
        return low

    # ---- contents -----------------------------------------------------------------------
    def __len__(self) -> int:
        return self._count()

    def _ids(self, ids) -> list:
        """User ids as Python ints or strs, checked like the local index."""
        return ids_mod.to_user(ids_mod.as_stored(ids, self.id_kind)).tolist()

    def _storable(self, item_id) -> bool:
        """Milvus' limits on string ids: expressions cannot hold line breaks, and Milvus Lite cannot
        delete or replace ids containing ' (it builds SQL from them unescaped)."""
        return not isinstance(item_id, str) or (len(item_id.encode()) <= ID_BYTES and "\n" not in item_id
                                                and "\r" not in item_id and not (self._lite and "'" in item_id))

    def __contains__(self, item_id) -> bool:
        return bool(self._fetch(self._ids(item_id)))

    def codes_of(self, ids) -> np.ndarray:
        rows = self._present(self._ids(ids), ("code",))
        width = codes_mod.packed_width(self.bits)
        return np.array([np.frombuffer(r["code"][0], dtype=np.uint8) for r in rows], dtype=np.uint8).reshape(-1, width)

    def items(self, ids) -> list[dict]:
        rows = self._present(self._ids(ids), ("label", "path"))
        return [{"id": r["id"], "label": label_text([i for i in r["label"].split(",") if i], self.class_names), "path": r["path"]} for r in rows]

    # ---- mutations ----------------------------------------------------------------------
    def _next_int_id(self) -> int:
        return self._max_int_id() + 1 if len(self) else 0

    def _check_batch(self, codes, ids, labels, paths):
        codes, stored, labels, paths = self._checked_batch(codes, ids, labels, paths)
        ids = ids_mod.to_user(stored).tolist()
        if not all(map(self._storable, ids)):
            raise SchnError(f"string ids for Milvus must be at most {ID_BYTES} UTF-8 bytes without line breaks"
                            + (" or ' (Milvus Lite cannot delete those)" if self._lite else ""))
        if labels is not None:
            labels = [",".join(map(str, np.flatnonzero(row))) for row in labels]
            if any(len(text) > LABEL_CHARS for text in labels):
                raise SchnError(f"too many positive classes for Milvus' {LABEL_CHARS}-character label field")
        if paths is not None and any(len(p.encode()) > PATH_BYTES for p in paths):
            raise SchnError(f"source paths for Milvus must be at most {PATH_BYTES} UTF-8 bytes")
        self._ensure_collection("int" if not ids or isinstance(ids[0], int) else "str")
        return codes, ids, labels, paths

    def _write(self, method, codes, ids, labels, paths) -> None:
        rows = [{"id": item_id, "code": codes[i].tobytes(), "label": "" if labels is None else labels[i],
                 "path": "" if paths is None else paths[i]} for i, item_id in enumerate(ids)]
        batch, size = [], 0
        for row in rows:
            row_size = _row_bytes(row)
            if batch and (len(batch) == INSERT_BATCH or size + row_size > INSERT_BYTES):
                method(self.collection, batch)
                batch, size = [], 0
            batch.append(row)
            size += row_size
        if batch:
            method(self.collection, batch)

    def add(self, codes, ids=None, labels=None, paths=None) -> np.ndarray:
        """Insert items; ids must be new. Returns their ids."""
        codes, ids, labels, paths = self._check_batch(codes, ids, labels, paths)
        present = self._fetch(ids)
        if present:
            raise SchnError(f"id {next(i for i in ids if i in present)!r} is already in the index; "
                            "use upsert to replace items")
        self._write(self.client.insert, codes, ids, labels, paths)
        return _id_array(ids, self.id_kind)

    def upsert(self, codes, ids, labels=None, paths=None) -> tuple[int, int]:
        """Replace items whose id exists (keeping their label/path unless given), add the others.
        Returns (replaced, added)."""
        codes, ids, labels, paths = self._check_batch(codes, ids, labels, paths)
        old = self._fetch(ids, ("label", "path"))
        if labels is None:
            labels = [old[i]["label"] if i in old else "" for i in ids]
        if paths is None:
            paths = [old[i]["path"] if i in old else "" for i in ids]
        self._write(self.client.upsert, codes, ids, labels, paths)
        return len(old), len(ids) - len(old)

    def delete(self, ids, missing: str = "error") -> int:
        """Remove items by id; returns how many were removed."""
        ids = self._ids(ids)
        present = [r["id"] for r in self._present(ids)] if missing == "error" else list(self._fetch(ids))
        present = list(dict.fromkeys(present))
        for start in range(0, len(present), LOOKUP_BATCH):
            chunk = present[start:start + LOOKUP_BATCH]
            self.client.delete(self.collection, filter=f"id in [{','.join(map(_literal, chunk))}]")
            self._deleted = True
        return len(present)

    # ---- search ---------------------------------------------------------------------------
    def _search(self, queries, limit: int, params: dict) -> list:
        """Milvus hits (id, distance) of each query, in batches small enough for one reply."""
        if self.index_type == "BIN_IVF_FLAT":
            params = {**params, "nprobe": self.nlist}  # probe every list: exact
        batch = max(1, min(1024, (1 << 20) // limit))
        out = []
        for start in range(0, len(queries), batch):
            found = self.client.search(self.collection, data=[q.tobytes() for q in queries[start:start + batch]],
                                       limit=limit, search_params={"metric_type": "HAMMING", "params": params},
                                       consistency_level=self._consistency())
            out += [([h["id"] for h in hits], [int(h["distance"]) for h in hits]) for hits in found]
        return out

    def _at_distance(self, query, d: int) -> tuple[list, list]:
        """Every item at exactly distance ``d`` (range search: range_filter <= distance < radius)."""
        if self.index_type == "BIN_IVF_FLAT":
            raise SchnError(f"more than {MAX_ROWS - 1} results reach one distance, and a BIN_IVF_FLAT collection has "
                            "no exact range search to complete them; use a smaller k or radius, BIN_FLAT, or a local index")
        ids, dist = self._search(query[None], MAX_ROWS, {"radius": d + 1, "range_filter": d})[0]
        if len(ids) >= MAX_ROWS:
            raise SchnError(f"more than {MAX_ROWS - 1} items lie at Hamming distance {d} of a query, more than Milvus "
                            f"returns ({MAX_ROWS} rows), so exact results are impossible; use a local index")
        return ids, dist

    def _sorted(self, ids, dist, keep=None) -> tuple[np.ndarray, np.ndarray]:
        ids, dist = _id_array(ids, self.id_kind), np.asarray(dist, dtype=np.int32)
        order = np.lexsort((ids, dist))[:keep]
        return ids[order], dist[order]

    def search(self, queries, k: int) -> Neighbors:
        """The k nearest items of each packed query, ``(nq, min(k, n))``, ties broken by id."""
        queries = codes_mod.check_packed(queries, self.bits)
        if int(k) < 1:
            raise SchnError(f"k must be at least 1, got {k}")
        n = len(self)
        k = min(int(k), n)
        found = [None] * len(queries)
        todo, limit = list(range(len(queries)) if k else []), min(k + 1, n, MAX_ROWS)
        while todo:
            retry = []
            for i, (ids, dist) in zip(todo, self._search(queries[todo], limit, {})):
                if len(ids) < limit or limit >= n or (len(ids) > k and dist[-1] > dist[k - 1]):
                    found[i] = self._sorted(ids, dist, k)  # the whole tie group at the k-th distance is here
                elif limit < MAX_ROWS:
                    retry.append(i)
                else:  # capped: items nearer than the last distance are complete; add one distance at a time
                    last = dist[-1]
                    ids, dist = [x for x, d in zip(ids, dist) if d < last], [d for d in dist if d < last]
                    for d in range(last, self.bits + 1):
                        if len(ids) >= k:
                            break
                        more_ids, more_dist = self._at_distance(queries[i], d)
                        ids, dist = ids + more_ids, dist + more_dist
                    found[i] = self._sorted(ids, dist, k)
            todo, limit = retry, min(2 * limit, n, MAX_ROWS)
        empty = _id_array([], self.id_kind)
        ids = np.array([f[0] for f in found]) if k else np.zeros((len(queries), 0), dtype=empty.dtype)
        dist = np.array([f[1] for f in found], dtype=np.int32) if k else np.zeros((len(queries), 0), np.int32)
        return Neighbors(ids.reshape(len(queries), k), dist.reshape(len(queries), k), None)

    def radius_search(self, queries, r: int) -> list[Neighbors]:
        """Every item within Hamming distance ``r`` (inclusive) of each query, by (distance, id)."""
        queries = codes_mod.check_packed(queries, self.bits)
        if int(r) < 0:
            raise SchnError(f"radius must be at least 0, got {r}")
        r, n = min(int(r), self.bits), len(self)
        if n == 0:
            return [Neighbors(*self._sorted([], []), None) for _ in queries]
        if self.index_type == "BIN_IVF_FLAT":
            return self._within_by_knn(queries, r, n)
        limit = min(n, MAX_ROWS)
        out = []
        for query, (ids, dist) in zip(queries, self._search(queries, limit, {"radius": r + 1, "range_filter": 0})):
            if len(ids) >= limit and limit < n:  # maybe capped: one distance at a time
                layers = [self._at_distance(query, d) for d in range(r + 1)]
                ids, dist = sum((x for x, _ in layers), []), sum((d for _, d in layers), [])
            out.append(Neighbors(*self._sorted(ids, dist), None))
        return out

    def _within_by_knn(self, queries, r: int, n: int) -> list[Neighbors]:
        """Radius search by k-NN searches with a growing limit: a server's range search on a
        BIN_IVF_FLAT index misses items even when it probes every list (its k-NN search does not)."""
        found, todo, limit = [None] * len(queries), list(range(len(queries))), min(64, n, MAX_ROWS)
        while todo:
            retry = []
            for i, (ids, dist) in zip(todo, self._search(queries[todo], limit, {})):
                if len(ids) < limit or limit >= n or dist[-1] > r:  # every item within r is here
                    keep = [j for j, d in enumerate(dist) if d <= r]
                    found[i] = Neighbors(*self._sorted([ids[j] for j in keep], [dist[j] for j in keep]), None)
                elif limit < MAX_ROWS:
                    retry.append(i)
                else:
                    self._at_distance(queries[i], r)  # refuses: more items within r than one search returns
            todo, limit = retry, min(4 * limit, n, MAX_ROWS)
        return found

    # ---- persistence ----------------------------------------------------------------------
    def save(self, path=None) -> str:
        """Milvus persists every write; this creates a still-empty collection and flushes."""
        if path is not None and str(path) != self.uri:
            raise SchnError(f"this index lives in collection {self.collection} at {shown_uri(self.uri)}; "
                            "save() takes no other path")
        self._ensure_collection(self.id_kind or "int")
        self.client.flush(self.collection)
        return self.uri

    @classmethod
    def open(cls, location, collection: str | None = None) -> "MilvusIndex":
        uri, collection = str(location), collection or DEFAULT_COLLECTION
        client = _connect(uri, collection, must_exist=True)
        if not client.has_collection(collection):
            raise SchnError(_missing(uri, collection))
        manifest = _read_manifest(client, uri, collection)
        client.load_collection(collection)
        return cls(client, uri, collection, manifest["bits"], id_kind=manifest["id_kind"],
                   class_names=manifest.get("class_names"), info=manifest.get("info"),
                   index_type=manifest.get("index_type", "BIN_FLAT"), nlist=manifest.get("nlist", 128), created=True)

    def describe(self) -> dict:
        out = self.manifest()
        info = out.pop("info")
        out.update({k: v for k, v in info.items() if k not in out}, count=len(self), uri=shown_uri(self.uri),
                   collection=self.collection)
        return out


@INDEX_BACKENDS.register("milvus")
def milvus_index(location, bits: int, *, collection=None, id_kind=None, class_names=None, info=None,
                 index_type: str = "BIN_FLAT", nlist: int = 128, overwrite: bool = False, **ignored) -> MilvusIndex:
    """A new index in a new collection, created at the first add/upsert or at save(); ``overwrite``
    then drops an existing schn collection of that name."""
    uri, collection = str(location), collection or DEFAULT_COLLECTION
    if not 1 <= int(bits) <= MAX_BITS:
        raise SchnError(f"code length must be between 1 and {MAX_BITS} bits for Milvus, got {bits}")
    if id_kind not in (None, *ids_mod.KINDS):
        raise SchnError(f"id kind must be one of {ids_mod.KINDS}, got {id_kind!r}")
    if index_type not in INDEX_TYPES:
        raise SchnError(f"unknown Milvus index type {index_type!r}; choose one of: {', '.join(INDEX_TYPES)}")
    if index_type != "BIN_FLAT" and not uri.startswith(MILVUS_PREFIXES):
        raise SchnError(f"Milvus Lite supports only the BIN_FLAT index; use it, or a Milvus server for {index_type}")
    if index_type == "BIN_IVF_FLAT" and not 1 <= int(nlist) <= MAX_NLIST:
        raise SchnError(f"nlist must be between 1 and {MAX_NLIST}, got {nlist}")
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,254}", collection):
        raise SchnError(f"collection name {collection!r} is invalid; use letters, digits and underscores")
    client = _connect(uri, collection, must_exist=False)
    if client.has_collection(collection):
        if not overwrite:
            raise SchnError(f"collection {collection} already exists at {shown_uri(uri)}; open it, or choose another "
                            "collection name (or overwrite it)")
        _read_manifest(client, uri, collection)
    return MilvusIndex(client, uri, collection, bits, id_kind=id_kind, class_names=class_names, info=info,
                       index_type=index_type, nlist=nlist, overwrite=overwrite)
