"""A Hamming index on local disk: packed codes, ids and per-item metadata, searched exactly.

Folder layout (``IDX/``, see ``schn.index.layout`` for every name the index creates)::

    manifest.json          what the index is and which base version is current (replaced atomically)
    v000003-1a2b3c/        the current base version
        codes.npy          (n, ceil(bits/8)) uint8, schn.codes packing (MSB first, zero padding)
        ids.npy            int64, or S<w> UTF-8 strings
        id_order.npy       argsort of ids (lookups by id without building anything)
        labels.npy         optional: (n, ceil(classes/8)) uint8, label rows packed like codes
        paths.npy          optional: S<w> UTF-8 source paths
    journal-v000003-1a2b3c.log   the changes since that base (``schn.index.journal``), if any

In memory an index is its *base* (the arrays of a version, searched by a named searcher built
once) plus a small *delta*: items added since (searched by brute force), and the *dead* slots of
items deleted or replaced since (masked out of results). Every mutation makes new arrays, never
changes old ones, so a shallow copy is an independent snapshot (``schn serve`` relies on that).

Saving an index opened from disk appends its changes to the journal (one fsynced frame; cost
independent of the index's size). A full save writes a complete new version folder, fsyncs it,
then replaces manifest.json: a crash at any point leaves the previous manifest pointing at the
previous, untouched version. A full save happens for a new index, when saving to another folder,
and on compaction: ``save(compact=True)``, ``schn index compact``, or automatically once the
journal holds more than ``delta_limit`` items. Opening checks sizes always and SHA-256 checksums
by default, memory-maps the arrays, and replays the journal.
"""
from __future__ import annotations

import os
import secrets
import time
from pathlib import Path

import numpy as np

from .. import codes as codes_mod
from ..errors import SchnError
from ..fileio import fsync_path, sha256_file, write_json
from . import ids as ids_mod
from . import journal as journal_mod
from . import layout
from .base import INDEX_BACKENDS, CodeIndex, Neighbors, label_text
from .layout import FORMAT, FORMAT_VERSION, INFO_KEYS, MANIFEST  # noqa: F401  (re-exported)
from .searchers import create_searcher, select_knn, sort_found


def delta_limit(base_items: int) -> int:
    """Journal items past which a save compacts (and the in-memory delta stays about this small)."""
    return max(10_000, base_items // 100)


def _save_array(path: Path, array: np.ndarray) -> dict:
    with open(path, "wb") as f:
        np.save(f, np.ascontiguousarray(array), allow_pickle=False)
        f.flush()
        os.fsync(f.fileno())
    return {"bytes": path.stat().st_size, "sha256": sha256_file(path)}


def _same_folder(a: Path | None, b: Path | None) -> bool:
    return a is not None and b is not None and os.path.realpath(a) == os.path.realpath(b)


class _Delta:
    """Items added since the base: codes, stored ids, packed labels / path bytes (or None), and
    their code words for the brute-force scan. Immutable: appending makes a new one."""

    def __init__(self, codes, ids, labels=None, paths=None):
        self.codes, self.ids, self.labels, self.paths = codes, ids, labels, paths
        self._words = self._lookup = None

    def __len__(self) -> int:
        return len(self.codes)

    @property
    def words(self) -> np.ndarray:
        if self._words is None:
            self._words = codes_mod.to_words(self.codes)
        return self._words

    @property
    def lookup(self) -> ids_mod.IdLookup:
        if self._lookup is None:
            self._lookup = ids_mod.IdLookup(self.ids)
        return self._lookup

    def plus(self, codes, ids, labels, paths) -> "_Delta":
        n, m = len(self), len(codes)
        return _Delta(np.concatenate([self.codes, codes]), ids_mod.concat(self.ids, ids) if n else ids,
                      _join(self.labels, labels, n, m), _join(self.paths, paths, n, m))

    def distances(self, query: np.ndarray) -> np.ndarray:
        return codes_mod.word_distances(codes_mod.to_words(query.reshape(1, -1))[0], self.words)


def _path_hashes(paths: np.ndarray) -> np.ndarray:
    """A 64-bit FNV-style hash of each ``S`` path, vectorised (equal paths hash equally; a few
    multiplies per 8 bytes, so ~1 s for 10M paths)."""
    width = paths.dtype.itemsize
    raw = np.ascontiguousarray(paths).view(np.uint8).reshape(len(paths), width)
    if width % 8:
        raw = np.pad(raw, ((0, 0), (0, 8 - width % 8)))
    words = np.ascontiguousarray(raw).view(np.uint64)
    h = np.full(len(paths), 0xCBF29CE484222325, dtype=np.uint64)
    for j in range(words.shape[1]):
        h = (h ^ words[:, j]) * np.uint64(0x100000001B3)
    return h


def _blank(like: np.ndarray, n: int) -> np.ndarray:
    """n empty rows of an optional column shaped like ``like`` (no labels / empty path)."""
    if like.dtype.kind == "S":
        return np.zeros(n, dtype="S1")
    return np.zeros((n, like.shape[1]), dtype=like.dtype)


def _join(have, new, n_have: int, n_new: int):
    """Optional column ``have`` (n_have rows) followed by ``new`` (n_new rows), blanks where absent."""
    if have is None and new is None:
        return None
    have = _blank(new, n_have) if have is None else have
    new = _blank(have, n_new) if new is None else new
    if have.dtype.kind == "S":
        return ids_mod.concat(have, new)
    if have.ndim == 2 and have.shape[1] != new.shape[1]:  # label rows packed for fewer classes (older rows): widen
        width = max(have.shape[1], new.shape[1])
        have, new = (np.pad(a, ((0, 0), (0, width - a.shape[1]))) for a in (have, new))
    return np.concatenate([have, new])


class HammingIndex(CodeIndex):
    """Packed binary codes with unique ids and optional labels and paths; exact k-NN and radius search.

    ``info`` carries what the codes came from (method, run, model checksum, ...) into the manifest.
    ``searcher``: a registered name: ``auto`` (multi-index hashing where it pays, else the FAISS
    flat scan), ``mih``, ``faiss`` or ``numpy``; it searches the base, the delta is scanned.

    Rows (``Neighbors.rows``, ``labels(rows)``, ``source_path(row)``, ``codes[row]``) are positions
    among the live items in one snapshot: the base's surviving items in order, then the delta's.
    Internally items sit in *slots*: base rows ``0..nb-1`` (some dead) then delta rows.
    """

    def __init__(self, bits: int, *, id_kind: str | None = None, class_names=None, info: dict | None = None,
                 searcher: str = "auto"):
        if int(bits) < 1:
            raise SchnError(f"code length must be at least 1 bit, got {bits}")
        if id_kind not in (None, *ids_mod.KINDS):
            raise SchnError(f"id kind must be one of {ids_mod.KINDS}, got {id_kind!r}")
        self.bits = int(bits)
        self.id_kind = id_kind
        self.class_names = list(class_names) if class_names is not None else None
        self.info = dict(info or {})
        self.searcher_name = searcher
        self.path: Path | None = None
        self._version = 0
        # the base
        self._codes = np.zeros((0, codes_mod.packed_width(bits)), dtype=np.uint8)
        self._ids = ids_mod.to_stored([], id_kind or "int")
        self._labels: np.ndarray | None = None
        self._paths: np.ndarray | None = None
        self._order: np.ndarray | None = None
        self._lookup: ids_mod.IdLookup | None = None
        self._searchers: dict = {}
        self._path_index: tuple | None = None  # (sorted path hashes, their base rows), see warm()
        # changes since the base: added items, and the sorted base slots deleted or replaced
        self._delta = _Delta(self._codes, self._ids)
        self._dead = np.zeros(0, dtype=np.int64)
        self._cache: dict = {}
        # the journal: None for an index never opened from disk (each save is a full one);
        # else the bytes and items already in it, the base version it extends, and the ops to append
        self._jend: int | None = None
        self._jitems = 0
        self._base_name: str | None = None
        self._pending: tuple = ()
        self.auto_compact = True  # save() compacts past delta_limit (schn serve does it in the background)

    # ---- slots and rows -------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self._codes) - len(self._dead) + len(self._delta)

    def _plain(self) -> bool:
        """No changes since the base: rows are base rows."""
        return not len(self._delta) and not len(self._dead)

    def _slots_to_rows(self, slots) -> np.ndarray:
        slots = np.asarray(slots, dtype=np.int64)
        return slots - np.searchsorted(self._dead, slots) if len(self._dead) else slots

    def _rows_to_slots(self, rows) -> np.ndarray:
        rows = np.asarray(rows, dtype=np.int64)
        if len(rows) and (rows.min(initial=0) < 0 or rows.max(initial=0) >= len(self)):
            raise IndexError(f"row out of range for an index of {len(self)} items")
        if not len(self._dead):
            return rows
        # live row p is slot p + (dead slots d_i with d_i - i <= p)
        return rows + np.searchsorted(self._dead - np.arange(len(self._dead)), rows, side="right")

    def _is_dead(self, slots: np.ndarray) -> np.ndarray:
        if not len(self._dead):
            return np.zeros(len(slots), dtype=bool)
        at = np.searchsorted(self._dead, slots).clip(0, len(self._dead) - 1)
        return self._dead[at] == slots

    def _column(self, name: str):
        """(base array, delta array) of ``codes``, ``ids``, ``labels`` or ``paths``."""
        return getattr(self, f"_{name}"), getattr(self._delta, name)

    def _take(self, name: str, slots) -> np.ndarray | None:
        """Column ``name`` at ``slots`` (base or delta; blanks where a part lacks the column)."""
        base, delta = self._column(name)
        if base is None and delta is None:
            return None
        slots = np.asarray(slots, dtype=np.int64)
        nb = len(self._codes)
        in_base = slots < nb
        if in_base.all() and base is not None:
            return base[slots]
        if not in_base.any() and delta is not None:
            return delta[slots - nb]
        a = base[slots[in_base]] if base is not None else _blank(delta, int(in_base.sum()))
        b = delta[slots[~in_base] - nb] if delta is not None else _blank(base, int((~in_base).sum()))
        joined = _join(a, b, len(a), len(b))  # the common dtype / width
        out = np.empty((len(slots), *joined.shape[1:]), dtype=joined.dtype)
        out[in_base], out[~in_base] = joined[:len(a)], joined[len(a):]
        return out

    def _live(self, name: str):
        """Column ``name`` of every live item in row order (None: no item has it)."""
        if name not in self._cache:
            base, delta = self._column(name)
            if base is not None and len(self._dead):
                base = np.delete(base, self._dead, axis=0)
            nb, nd = len(self._codes) - len(self._dead), len(self._delta)
            if name in ("codes", "ids") and (nd == 0 or nb == 0):
                self._cache[name] = base if nd == 0 else delta
            else:
                self._cache[name] = _join(base, delta if nd else None, nb, nd) if nd else base
        return self._cache[name]

    # ---- contents -----------------------------------------------------------------------
    @property
    def codes(self) -> np.ndarray:
        return self._codes if self._plain() else self._live("codes")

    @property
    def ids(self) -> np.ndarray:
        return ids_mod.to_user(self._ids if self._plain() else self._live("ids"))

    def ids_at(self, rows) -> np.ndarray:
        """The ids of ``rows`` (without materialising every id)."""
        return ids_mod.to_user(self._take("ids", self._rows_to_slots(rows)))

    def codes_at(self, rows) -> np.ndarray:
        """The packed codes of ``rows`` (without materialising every code)."""
        return np.asarray(self._take("codes", self._rows_to_slots(rows)))

    def _id_lookup(self) -> ids_mod.IdLookup:
        """Lookups among the base's ids (dead ones included)."""
        if self._lookup is None:
            self._lookup = ids_mod.IdLookup(self._ids, self._order)
        return self._lookup

    def _slots_of(self, wanted: np.ndarray) -> np.ndarray:
        """Slot of each wanted stored id among the live items, -1 where absent."""
        out = np.full(len(wanted), -1, dtype=np.int64)
        if len(self._delta):
            at = self._delta.lookup.rows(wanted)
            out[at >= 0] = at[at >= 0] + len(self._codes)
        if len(self._codes):
            at = self._id_lookup().rows(wanted)
            use = (out < 0) & (at >= 0)
            use[use] = ~self._is_dead(at[use])
            out[use] = at[use]
        return out

    def rows_of(self, ids, missing: str = "error") -> np.ndarray:
        wanted = ids_mod.as_stored(ids, self.id_kind)
        slots = self._slots_of(wanted) if len(self) else np.full(len(wanted), -1, np.int64)
        if missing == "error" and (slots < 0).any():
            absent = ids_mod.to_user(wanted[slots < 0])
            raise SchnError(f"id {absent[0].item()!r} is not in the index ({int((slots < 0).sum())} of {len(slots)} ids missing)")
        return np.where(slots >= 0, self._slots_to_rows(slots), -1)

    def __contains__(self, item_id) -> bool:
        return bool(self.rows_of([item_id], missing="ignore")[0] >= 0)

    def labels(self, rows) -> np.ndarray | None:
        """Label rows (0/1 uint8) of ``rows``, or None when the index has no labels."""
        packed = self._take("labels", self._rows_to_slots(np.atleast_1d(rows)))
        if packed is None:
            return None
        return np.unpackbits(packed, axis=-1, count=len(self.class_names or []) or None)

    def label_text(self, row: int) -> str:
        labels = self.labels([row])
        if labels is None:
            return ""
        return label_text(np.flatnonzero(labels[0]), self.class_names)

    def source_path(self, row: int) -> str:
        paths = self._take("paths", self._rows_to_slots([row]))
        return "" if paths is None else paths[0].decode("utf-8")

    def uses_path(self, path: str) -> bool:
        """Whether any item's path is ``path``."""
        raw = path.encode("utf-8")
        if self._delta.paths is not None and bool((self._delta.paths == raw).any()):
            return True
        if self._paths is None or len(raw) > self._paths.dtype.itemsize:
            return False
        if self._path_index is None:  # one scan (~10 ms per million items); warm() builds the lookup
            hits = np.flatnonzero(self._paths == raw)
        else:  # the rows whose path hashes the same, then the paths themselves
            hashes, rows = self._path_index
            want = _path_hashes(np.array([raw], dtype=self._paths.dtype))[0]
            hits = rows[np.searchsorted(hashes, want):np.searchsorted(hashes, want, side="right")]
            hits = hits[self._paths[hits] == raw]
        return bool(len(hits)) and not self._is_dead(hits).all()

    @property
    def version(self) -> int:
        """The saved version this index was opened at or last saved as (0: never saved)."""
        return self._version

    def codes_of(self, ids) -> np.ndarray:
        return self.codes_at(self.rows_of(ids))

    def items(self, ids) -> list[dict]:
        rows = self.rows_of(ids)
        stored = ids_mod.to_user(self._take("ids", self._rows_to_slots(rows)))
        return [{"id": stored[i].item(), "label": self.label_text(int(r)), "path": self.source_path(int(r))}
                for i, r in enumerate(rows)]

    # ---- mutations ----------------------------------------------------------------------
    def _changed(self) -> None:
        self._cache = {}

    def _base_changed(self) -> None:
        self._order = self._lookup = self._path_index = None
        self._searchers = {}
        self._cache = {}

    def _next_int_id(self) -> int:
        """One past the largest live id (as if deleted items were gone: the same after compaction)."""
        if not len(self):
            return 0
        top = [int(self._delta.ids.max())] if len(self._delta) else []
        if self._base_live_count():
            lookup, j = self._id_lookup(), len(self._codes) - 1
            while self._is_dead(lookup.order[j:j + 1])[0]:  # at most len(dead) steps
                j -= 1
            top.append(int(lookup.sorted[j]))
        return max(top) + 1

    def _check_batch(self, codes, ids, labels, paths):
        codes, stored, labels, paths = self._checked_batch(codes, ids, labels, paths)
        if labels is not None:
            labels = np.packbits(labels, axis=1)
        if paths is not None:
            paths = np.array([p.encode("utf-8") for p in paths] or [b""], dtype=bytes)[:len(codes)]
        return codes, stored, labels, paths

    def _record(self, op: journal_mod.Op) -> None:
        """Keep ``op`` for the journal (a new tuple: copies of this index keep their own)."""
        if self._jend is not None:
            self._pending = self._pending + (op,)

    def add(self, codes, ids=None, labels=None, paths=None) -> np.ndarray:
        """Append items; ids must be new. Returns their rows."""
        codes, stored, labels, paths = self._check_batch(codes, ids, labels, paths)
        if len(self):
            present = self._slots_of(stored)
            if (present >= 0).any():
                first = ids_mod.to_user(stored[present >= 0])[0].item()
                raise SchnError(f"id {first!r} is already in the index; use upsert to replace items")
        rows = self._append(codes, stored, labels, paths)
        self._record(journal_mod.Op("add", stored, codes, labels, paths,
                                    self.class_names if labels is not None else None))
        self._maybe_fold()
        return rows

    def _append(self, codes, stored, labels, paths) -> np.ndarray:
        start, n = len(self), len(codes)
        self._delta = self._delta.plus(codes, stored, labels, paths)
        self.id_kind = self.id_kind or ("str" if stored.dtype.kind == "S" else "int")
        self._changed()
        return np.arange(start, start + n)

    def _kill(self, slots: np.ndarray) -> None:
        """Remove the live items at ``slots``: base ones are masked, delta ones dropped."""
        nb = len(self._codes)
        base, delta = slots[slots < nb], slots[slots >= nb] - nb
        if len(base):
            self._dead = np.union1d(self._dead, base).astype(np.int64)
        if len(delta):
            keep = np.ones(len(self._delta), dtype=bool)
            keep[delta] = False
            d = self._delta
            self._delta = _Delta(d.codes[keep], d.ids[keep], None if d.labels is None else d.labels[keep],
                                 None if d.paths is None else d.paths[keep])
        self._changed()

    def delete(self, ids, missing: str = "error") -> int:
        """Remove items by id; returns how many were removed. Later items keep their order."""
        rows = self.rows_of(ids, missing=missing)
        slots = np.unique(self._rows_to_slots(rows[rows >= 0]))
        if len(slots) == 0:
            return 0
        gone = self._take("ids", slots)
        self._kill(slots)
        self._record(journal_mod.Op("delete", gone))
        self._maybe_fold()
        return len(slots)

    def upsert(self, codes, ids, labels=None, paths=None) -> tuple[int, int]:
        """Replace items whose id exists, add the others. Returns (replaced, added). A replaced
        item moves to the end; it keeps its label and path when the batch has none."""
        codes, stored, labels, paths = self._check_batch(codes, ids, labels, paths)
        slots = self._slots_of(stored) if len(self) else np.full(len(stored), -1, np.int64)
        old = slots >= 0
        if old.any():
            labels = self._carry("labels", labels, slots, old)
            paths = self._carry("paths", paths, slots, old)
            self._kill(slots[old])
        self._append(codes, stored, labels, paths)
        self._record(journal_mod.Op("upsert", stored, codes, labels, paths,
                                    self.class_names if labels is not None else None))
        self._maybe_fold()
        return int(old.sum()), int((~old).sum())

    def _carry(self, name: str, given, slots, old):
        """A batch's column, or the replaced items' own values where the batch has none."""
        if given is not None:
            return given
        previous = self._take(name, slots[old])
        if previous is None:
            return None
        out = _blank(previous, len(slots))
        if out.dtype.kind == "S":
            out = out.astype(previous.dtype)
        out[old] = previous
        return out

    def _maybe_fold(self) -> None:
        """Merge the delta into the base in memory: always for an index without a journal (one
        array, searched by the named searcher, as before journals), else when it grew far past
        what compaction would have folded (a caller adding millions before saving)."""
        if self._plain():
            return
        if self._jend is None or len(self._delta) + len(self._dead) > 4 * delta_limit(len(self._codes)):
            self._fold()

    def _fold(self) -> None:
        if self._plain():
            return
        live = {name: self._live(name) for name in ("codes", "ids", "labels", "paths")}
        self._codes, self._ids, self._labels, self._paths = live["codes"], live["ids"], live["labels"], live["paths"]
        self._delta = _Delta(self._codes[:0], self._ids[:0])
        self._dead = np.zeros(0, dtype=np.int64)
        self._base_changed()

    def _replay(self, op: journal_mod.Op, where) -> None:
        """Apply a journaled op (not recorded again)."""
        width = codes_mod.packed_width(self.bits)
        kind_ok = (op.ids.dtype.kind == "S") == ((self.id_kind or "int") == "str") and op.ids.ndim == 1
        if not kind_ok or (op.codes is not None and op.codes.shape != (len(op.ids), width)):
            raise SchnError(f"index journal {where} is damaged (a {op.kind} of the wrong shape); "
                            "restore the index from a backup or rebuild it")
        if op.class_names is not None and self.class_names is None:
            self.class_names = list(op.class_names)
        slots = self._slots_of(op.ids) if len(self) else np.full(len(op.ids), -1, np.int64)
        if op.kind == "add" and (slots >= 0).any():
            raise SchnError(f"index journal {where} is damaged (an add of an id already there); "
                            "restore the index from a backup or rebuild it")
        if (slots >= 0).any():
            self._kill(slots[slots >= 0])
        if op.kind != "delete":
            self._append(op.codes, op.ids, op.labels, op.paths)

    # ---- search ---------------------------------------------------------------------------
    def searcher(self, name: str | None = None):
        """The base's searcher ``name`` (built once per base and shared by its snapshots)."""
        name = name or self.searcher_name
        if name not in self._searchers:
            self._searchers[name] = create_searcher(name, self._codes, self.bits, tie_order=self._id_lookup().order)
        return self._searchers[name]

    def warm(self) -> "HammingIndex":
        """Build now what searches need (the base's searcher and id lookup, the delta's words and
        lookup), not inside the first, or a concurrent, search."""
        if len(self._codes):
            self.searcher()
        if self._paths is not None and len(self._paths) and self._path_index is None:
            # so that a delete's "is its image still used?" does not scan every path
            hashes = _path_hashes(self._paths)
            rows = np.argsort(hashes, kind="stable")
            self._path_index = (hashes[rows], rows)
        if len(self._delta):
            self._delta.words, self._delta.lookup  # noqa: B018  (built on first use)
        return self

    def _queries(self, queries) -> np.ndarray:
        return codes_mod.check_packed(queries, self.bits)

    def search(self, queries, k: int, searcher: str | None = None) -> Neighbors:
        """The k nearest items of each packed query, ``(nq, min(k, n))``, ties broken by id."""
        queries = self._queries(queries)
        if int(k) < 1:
            raise SchnError(f"k must be at least 1, got {k}")
        k = min(int(k), len(self))
        if k == 0:
            empty = np.zeros((len(queries), 0), dtype=np.int64)
            return Neighbors(ids_mod.to_user(self._ids[:0]).reshape(len(queries), 0), empty.astype(np.int32), empty)
        if self._plain():
            rows, dist = select_knn(self.searcher(searcher).knn(queries, k), k, self._ids)
            return Neighbors(ids_mod.to_user(self._ids[rows.ravel()]).reshape(rows.shape), dist, rows)
        merged = [self._merge(b, d, k) for b, d in zip(self._base_knn(queries, k, searcher), self._delta_knn(queries, k))]
        slots = np.stack([m[0] for m in merged])
        stored = ids_mod.to_user(self._take("ids", slots.ravel())).reshape(slots.shape)
        return Neighbors(stored, np.stack([m[1] for m in merged]), self._slots_to_rows(slots))

    def radius_search(self, queries, r: int, searcher: str | None = None) -> list[Neighbors]:
        """Every item within Hamming distance ``r`` (inclusive) of each query, by (distance, id)."""
        queries = self._queries(queries)
        if int(r) < 0:
            raise SchnError(f"radius must be at least 0, got {r}")
        if len(self) == 0:
            return [Neighbors(self.ids[:0], np.zeros(0, np.int32), np.zeros(0, np.int64)) for _ in queries]
        r = min(int(r), self.bits)  # no code is farther; searchers take a C int
        if self._plain():
            found = sort_found(self.searcher(searcher).radius(queries, r), self._ids)
            return [Neighbors(ids_mod.to_user(self._ids[rows]), dist, rows) for rows, dist in found]
        base = self._base_live(self.searcher(searcher).radius(queries, r)) if self._base_live_count() else \
            [(np.zeros(0, np.int64), np.zeros(0, np.int32))] * len(queries)
        out = []
        for (b_slots, b_dist), q in zip(base, queries):
            d = self._delta.distances(q) if len(self._delta) else np.zeros(0, np.int32)
            near = np.flatnonzero(d <= r)
            slots, dist = self._merge((b_slots, b_dist), (near + len(self._codes), d[near]), None)
            out.append(Neighbors(ids_mod.to_user(self._take("ids", slots)), dist, self._slots_to_rows(slots)))
        return out

    def _base_live_count(self) -> int:
        return len(self._codes) - len(self._dead)

    def _base_live(self, found) -> list:
        """Candidates without the dead base slots."""
        out = []
        for rows, dist in found:
            rows = np.asarray(rows, dtype=np.int64)
            alive = ~self._is_dead(rows)
            out.append((rows[alive], np.asarray(dist, dtype=np.int32)[alive]))
        return out

    def _base_knn(self, queries, k: int, searcher) -> list:
        """Per query, the base's live candidates: a complete set for its k nearest live items.

        The searcher's candidates are complete up to their last (distance, id); with dead rows
        removed they still are, and hold the k nearest live rows once at least k survive. So ask
        for a few more than k, and only for the queries where too many were dead, for k + dead."""
        nb, dead = len(self._codes), len(self._dead)
        live = nb - dead
        if live == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.int32))] * len(queries)
        kb = min(k, live)
        kk = min(nb, kb + min(dead, max(16, kb)))
        found = self._base_live(self.searcher(searcher).knn(queries, kk))
        short = [i for i, (rows, _) in enumerate(found) if len(rows) < kb] if kk < nb else []
        if short:
            again = self._base_live(self.searcher(searcher).knn(queries[short], min(nb, kb + dead)))
            for i, candidates in zip(short, again):
                found[i] = candidates
        return found

    def _delta_knn(self, queries, k: int) -> list:
        """Per query, the delta's complete candidate set for its k nearest (brute force)."""
        nd = len(self._delta)
        if nd == 0:
            return [(np.zeros(0, np.int64), np.zeros(0, np.int32))] * len(queries)
        out = []
        for q in queries:
            d = self._delta.distances(q)
            near = np.flatnonzero(d <= np.partition(d, min(k, nd) - 1)[min(k, nd) - 1])
            out.append((near + len(self._codes), d[near]))
        return out

    def _merge(self, base, delta, k: int | None):
        """One query's base and delta candidates ordered by (distance, id); the first k if k."""
        slots = np.concatenate([base[0], delta[0]]).astype(np.int64)
        dist = np.concatenate([base[1], delta[1]]).astype(np.int32)
        keys = self._take("ids", slots)
        if keys is None or not len(slots):
            return slots, dist
        if k is None:
            ((order, dist),) = sort_found([(np.arange(len(slots)), dist)], keys)
            return slots[order], dist
        order, dist = select_knn([(np.arange(len(slots)), dist)], k, keys)
        return slots[order[0]], dist[0]

    # ---- persistence ----------------------------------------------------------------------
    def manifest(self) -> dict:
        return {
            "format": FORMAT, "format_version": FORMAT_VERSION, "bits": self.bits,
            "bytes_per_code": codes_mod.packed_width(self.bits),
            "bit_order": "bit j in byte j//8 at position 7 - j%8 (numpy packbits, big); padding bits 0",
            "count": len(self), "id_kind": self.id_kind or "int", "class_names": self.class_names,
            **{k: v for k, v in self.info.items() if k not in ("count", "bits")},
        }

    @property
    def journal_items(self) -> int:
        """Items the journal touches (saved and not yet saved) since the base version."""
        return self._jitems + sum(op.items for op in self._pending)

    def compaction_due(self) -> bool:
        """Whether the journal outgrew ``delta_limit`` (the next full save folds it into a base)."""
        return self._jend is not None and self.journal_items > delta_limit(len(self._codes))

    def save(self, path: str | Path | None = None, *, compact: bool | None = None) -> Path:
        """Make the index durable; returns its folder (see the module docstring).

        An index opened from (or compacted into) its folder appends its changes to the journal;
        ``compact=True`` writes a new base version instead, ``None`` does so past ``delta_limit``
        (when ``auto_compact``). Anything else, or a save to another folder, is a full save."""
        return self._save(path, compact)

    def compact(self) -> Path:
        """Fold the journal into a new base version (a full save to the index's own folder)."""
        return self._save(None, True)

    def _save(self, path, compact: bool | None) -> Path:
        folder = Path(path) if path is not None else self.path
        if folder is None:
            raise SchnError("this index has no folder yet; pass a path to save()")
        same = _same_folder(folder, self.path)
        if not same:  # only ever an empty folder or another index is made this index
            layout.check_target(folder, overwrite=True)
        if folder.exists() and not folder.is_dir():
            raise SchnError(f"{folder} exists and is not a folder; choose another index path")
        folder.mkdir(parents=True, exist_ok=True)
        with layout.locked(folder):
            on_disk = layout.read_manifest(folder) if layout.is_index(folder) else None
            disk_version = on_disk["version"] if on_disk else 0
            if on_disk and same and disk_version != self._version:
                self._changed_on_disk(folder, f"version {self._version} -> {disk_version}")
            journaled = same and self._jend is not None and on_disk is not None and on_disk["data"] == self._base_name
            if journaled and compact is None:
                compact = self.auto_compact and self.compaction_due()
            if journaled and not compact:
                self._commit_journal(folder)
                return folder
            if journaled:  # a commit of another writer would be lost by the new base
                seen = journal_mod.read(folder / layout.journal_name(self._base_name), self._base_name, self.bits).end
                if seen != self._jend:
                    self._changed_on_disk(folder, "its journal grew")
            self._write_version(folder, on_disk)
        return folder

    def _changed_on_disk(self, folder, what: str):
        raise SchnError(f"index {folder} changed on disk since it was opened ({what}); open it again and "
                        "repeat the change")

    def _commit_journal(self, folder: Path) -> None:
        """Append the pending ops as one fsynced journal frame."""
        if not self._pending:
            return
        path = folder / layout.journal_name(self._base_name)
        try:
            end = journal_mod.append(path, self._jend, journal_mod.header(self._base_name, self.bits, self.id_kind or "int"),
                                     journal_mod.encode(list(self._pending)))
        except journal_mod.Changed:
            self._changed_on_disk(folder, "another writer committed to its journal")
        self._jend, self._jitems, self._pending = end, self.journal_items, ()

    def _write_version(self, folder: Path, on_disk: dict | None) -> None:
        """A complete new base version, then the manifest; then what the previous one retired."""
        self._fold()
        version = (on_disk["version"] if on_disk else 0) + 1
        name = f"v{version:06d}-{secrets.token_hex(3)}"
        tmp = folder / f".tmp-{name}"
        current = {on_disk["data"], layout.journal_name(on_disk["data"])} if on_disk else set()
        layout.clear_pending(folder, keep=current)  # what an interrupted save left
        layout.write_pending(folder, [tmp.name, name])  # recorded before created: a crash leaves nothing unnamed
        tmp.mkdir()
        try:
            files = {"codes.npy": _save_array(tmp / "codes.npy", self._codes),
                     "ids.npy": _save_array(tmp / "ids.npy", self._ids),
                     "id_order.npy": _save_array(tmp / "id_order.npy", self._id_lookup().order)}
            if self._labels is not None:
                files["labels.npy"] = _save_array(tmp / "labels.npy", self._labels)
            if self._paths is not None:
                files["paths.npy"] = _save_array(tmp / "paths.npy", self._paths)
            fsync_path(tmp)
            os.rename(tmp, folder / name)
        except BaseException:
            layout.remove_own(folder, [tmp.name])
            (folder / layout.PENDING).unlink(missing_ok=True)
            raise
        retired = sorted(current)
        manifest, now = self.manifest(), time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        manifest.update(version=version, data=name, files=files, retired=retired,
                        created=(on_disk or {}).get("created", now), updated=now)
        write_json(folder / MANIFEST, manifest, fixed_tmp=True)  # a killed save leaves one known temp
        fsync_path(folder)
        # the previous base and its journal, and what an earlier save retired but a crash kept
        layout.remove_own(folder, retired + list((on_disk or {}).get("retired", [])))
        layout.remove_own(folder, [e.name for e in folder.iterdir() if layout.TMP_NAME.fullmatch(e.name)])
        (folder / layout.PENDING).unlink(missing_ok=True)
        self.path, self._version, self._base_name = folder, version, name
        if self._jend is not None:
            self._jend, self._jitems, self._pending = 0, 0, ()

    def hold_writer_lock(self, long_lived: bool = True) -> None:
        """Hold the folder's writer lock until :meth:`release_writer_lock` (``schn serve`` does
        for its lifetime); other processes' writers then fail in one line (``long_lived``: at
        once, else after waiting a moment for this one to finish)."""
        layout.hold(self.path, long_lived)

    def release_writer_lock(self) -> None:
        layout.release(self.path)

    @classmethod
    def open(cls, path: str | Path, *, verify: bool = True, mmap: bool = True, searcher: str = "auto",
             writer: bool = False, long_lived: bool = False) -> "HammingIndex":
        """Open a saved index (and replay its journal); refuses a damaged or foreign one with one
        clear line. ``writer``: hold the writer lock (see :meth:`hold_writer_lock`) from before
        reading, so nothing changes it underneath."""
        folder = Path(path)
        if not folder.is_dir():
            raise SchnError(f"no index at {folder}; build one with `schn index build RUN -o {folder}`")
        if writer:
            layout.hold(folder, long_lived)
        try:
            for attempt in range(3):
                manifest = layout.read_manifest(folder)
                try:
                    return cls._open_version(folder, manifest, verify, mmap, searcher)
                except SchnError:  # a compaction by another process may have replaced the version
                    if attempt == 2 or layout.read_manifest(folder)["data"] == manifest["data"]:
                        raise
        except BaseException:
            if writer:
                layout.release(folder)
            raise

    @classmethod
    def _open_version(cls, folder: Path, manifest: dict, verify: bool, mmap: bool, searcher: str) -> "HammingIndex":
        data = folder / manifest["data"]
        arrays = {}
        for name, meta in manifest["files"].items():
            file = data / name
            if not file.is_file():
                raise SchnError(f"index {folder} is damaged: {manifest['data']}/{name} is missing; rebuild the index")
            if file.stat().st_size != meta["bytes"]:
                raise SchnError(f"index {folder} is damaged: {name} has {file.stat().st_size} bytes, the manifest says "
                                f"{meta['bytes']} (truncated?); rebuild the index")
            if verify and sha256_file(file) != meta["sha256"]:
                raise SchnError(f"index {folder} is damaged: the checksum of {name} differs from the manifest; "
                                "rebuild the index")
            try:
                # a plain ndarray view of the mapping: np.memmap's subclass hooks made every row
                # lookup of a search ~10x dearer (measured under `schn serve`)
                arrays[name] = np.asarray(np.load(file, mmap_mode="r" if mmap else None, allow_pickle=False))
            except ValueError as exc:
                raise SchnError(f"index {folder} is damaged: cannot read {name} ({exc}); rebuild the index") from None
        index = cls(manifest["bits"], id_kind=manifest["id_kind"], class_names=manifest.get("class_names"),
                    info={k: v for k, v in manifest.items() if k in INFO_KEYS}, searcher=searcher)
        n = manifest["count"]
        _check_arrays(folder, index, arrays, n)
        index._codes, index._ids, index._order = arrays["codes.npy"], arrays["ids.npy"], arrays["id_order.npy"]
        index._labels, index._paths = arrays.get("labels.npy"), arrays.get("paths.npy")
        index._delta = _Delta(index._codes[:0], index._ids[:0])
        index.path, index._version, index._base_name = folder, manifest["version"], manifest["data"]
        where = folder / layout.journal_name(manifest["data"])
        contents = journal_mod.read(where, manifest["data"], index.bits)
        index._jend, index._jitems = contents.end, contents.items
        for op in contents.ops:
            index._replay(op, where)
        return index

    def describe(self) -> dict:
        """The manifest's facts plus sizes, for ``schn index info``."""
        out = self.manifest()
        if self.path is not None and layout.is_index(self.path):
            saved = layout.read_manifest(self.path)
            out.update({k: saved[k] for k in ("created", "updated", "files") if k in saved})
        out.update(path=str(self.path) if self.path else None, version=self._version,
                   code_bytes=int(self._codes.nbytes + self._delta.codes.nbytes),
                   id_bytes=int(self._ids.nbytes + self._delta.ids.nbytes),
                   has_labels=self._labels is not None or self._delta.labels is not None,
                   has_paths=self._paths is not None or self._delta.paths is not None,
                   journal_items=self.journal_items, journal_bytes=self._jend or 0)
        return out


def _check_arrays(folder, index: HammingIndex, arrays: dict, n: int) -> None:
    """Shapes and dtypes of an opened version's arrays against its manifest."""
    codes, stored, order = arrays["codes.npy"], arrays["ids.npy"], arrays["id_order.npy"]
    ok = (codes.shape == (n, codes_mod.packed_width(index.bits)) and codes.dtype == np.uint8
          and stored.shape == (n,) and stored.dtype.kind == ("S" if index.id_kind == "str" else "i")
          and order.shape == (n,) and order.dtype.kind in "iu")
    labels, paths = arrays.get("labels.npy"), arrays.get("paths.npy")
    ok = ok and (labels is None or (labels.ndim == 2 and len(labels) == n and labels.dtype == np.uint8))
    ok = ok and (paths is None or (paths.shape == (n,) and paths.dtype.kind == "S"))
    if not ok:
        raise SchnError(f"index {folder} is damaged: its arrays do not match the manifest's {n} items of "
                        f"{index.bits} bits; rebuild the index")


@INDEX_BACKENDS.register("local")
def local_index(location, bits: int, overwrite: bool = False, **options) -> HammingIndex:
    """A new local index that saves to the folder ``location`` (replacing an index there if
    ``overwrite``; a folder holding anything else is refused before anything is written)."""
    folder = Path(location)
    layout.check_target(folder, overwrite)
    index = HammingIndex(bits, **options)
    index.path = folder
    if layout.is_index(folder):
        layout.probe(folder)  # a served index: say so now, not after encoding and storing images
        index._version = layout.read_manifest(folder)["version"]  # replaced by the next save
    return index
