"""What a local index folder holds and who may write it: the manifest's schema, the names the
index itself creates (the only things it ever deletes), and the one-writer lock.

Names the index creates in ``IDX/``: ``manifest.json`` (and ``.manifest.json.tmp`` while it is
replaced), ``.lock``, version folders ``v000003-1a2b3c`` (and ``.tmp-v000003-1a2b3c`` while one
is written), journals ``journal-v000003-1a2b3c.log``, ``.pending.json`` (the names a save is
about to create, so a crash never leaves a folder nobody recorded) and ``images/`` (see
``schn.index.images``). A save deletes only names recorded in the manifest
(``data`` of the previous manifest, its ``retired`` list), in ``.pending.json``, or matching the
exact ``.tmp-`` pattern: never anything a user put there.
"""
from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import shutil
import threading
import time
from contextlib import contextmanager
from pathlib import Path

from .. import codes as codes_mod
from ..errors import SchnError
from ..fileio import write_json
from . import ids as ids_mod

FORMAT = "schn-index"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
LOCK = ".lock"
PENDING = ".pending.json"
VERSION_NAME = re.compile(r"v\d{6,}-[0-9a-f]{6}")
TMP_NAME = re.compile(r"\.tmp-v\d{6,}-[0-9a-f]{6}")
JOURNAL_NAME = re.compile(r"journal-v\d{6,}-[0-9a-f]{6}\.log")
ARRAY_FILES = ("codes.npy", "ids.npy", "id_order.npy", "labels.npy", "paths.npy")
REQUIRED_FILES = ("codes.npy", "ids.npy", "id_order.npy")
INFO_KEYS = ("method", "run", "model_checksum", "source", "dataset", "created_by")
MAX_BITS = 1 << 16
# Short-lived writers (CLI add/delete, a save) wait this long for another short-lived one.
LOCK_WAIT_S = 2.0


def journal_name(data: str) -> str:
    """The journal of base version ``data`` (its name ties it to that base)."""
    return f"journal-{data}.log"


def own_name(name: str) -> bool:
    """Whether ``name`` is one the index creates (a version, its temporary, a journal)."""
    return any(p.fullmatch(name) for p in (VERSION_NAME, TMP_NAME, JOURNAL_NAME))


def remove_own(folder: Path, names) -> None:
    """Delete the entries ``names`` of ``folder`` that the index created (checked by pattern too)."""
    for name in names:
        if not isinstance(name, str) or not own_name(name):
            continue
        target = folder / name
        if target.is_dir() and not target.is_symlink():
            shutil.rmtree(target, ignore_errors=True)
        elif target.is_file() or target.is_symlink():
            target.unlink(missing_ok=True)


def is_index(folder: Path) -> bool:
    return (Path(folder) / MANIFEST).is_file()


def check_target(folder: Path, overwrite: bool) -> None:
    """Refuse to make ``folder`` an index unless it is new, empty, or (with ``overwrite``) an index.

    Called before anything is written there, so a refusal leaves the folder as it was."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SchnError(f"{folder} exists and is not a folder; choose another index path")
    if not folder.exists():
        return
    if is_index(folder):
        if not overwrite:
            raise SchnError(f"{folder} already holds an index; open it, pass --overwrite, or choose another path")
        return
    # an index's own image store may come first (``build --store-images`` writes it before the index)
    if any(entry.name not in (LOCK, PENDING, "images") for entry in folder.iterdir()):
        raise SchnError(f"{folder} is a folder with other files in it, not a schn index; choose a new or empty "
                        "folder for the index (--overwrite only ever replaces an index)")


# ---- manifest schema ------------------------------------------------------------------------
def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _damaged(folder, what: str) -> SchnError:
    return SchnError(f"index {folder} is damaged: {MANIFEST} {what}; rebuild the index")


def read_manifest(folder: Path) -> dict:
    """The manifest of ``folder``, checked field by field (a damaged one is one clear line)."""
    file = Path(folder) / MANIFEST
    if not file.is_file():
        raise SchnError(f"{folder} is not a schn index (no {MANIFEST}); build one with `schn index build`")
    try:
        manifest = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError, RecursionError):
        raise SchnError(f"index {folder} is damaged: {MANIFEST} is not valid JSON; rebuild the index") from None
    if not isinstance(manifest, dict) or manifest.get("format") != FORMAT:
        raise SchnError(f"{folder} is not a schn index ({MANIFEST} has no format {FORMAT!r})")
    fv = manifest.get("format_version", 0)
    if not _is_int(fv):
        raise _damaged(folder, f"has format_version {fv!r}, not an integer")
    if fv > FORMAT_VERSION:
        raise SchnError(f"index {folder} was written by a newer schn (format {fv}); upgrade schn")
    missing = [k for k in ("bits", "count", "id_kind", "data", "files", "version") if k not in manifest]
    if missing:
        raise _damaged(folder, f"lacks {missing}")
    check_manifest(folder, manifest)
    return manifest


def check_manifest(folder, m: dict) -> None:
    """Type and range of every field ``open`` relies on."""
    def need(ok: bool, what: str):
        if not ok:
            raise _damaged(folder, what)

    need(_is_int(m["bits"]) and 1 <= m["bits"] <= MAX_BITS, f"has bits {m['bits']!r}, not an integer in 1..{MAX_BITS}")
    if "bytes_per_code" in m:
        need(m["bytes_per_code"] == codes_mod.packed_width(m["bits"]),
             f"has bytes_per_code {m['bytes_per_code']!r}, not {codes_mod.packed_width(m['bits'])} for {m['bits']} bits")
    need(_is_int(m["count"]) and m["count"] >= 0, f"has count {m['count']!r}, not an integer >= 0")
    need(_is_int(m["version"]) and m["version"] >= 1, f"has version {m['version']!r}, not an integer >= 1")
    need(m["id_kind"] in ids_mod.KINDS, f"has id_kind {m['id_kind']!r}, not one of {ids_mod.KINDS}")
    need(isinstance(m["data"], str) and VERSION_NAME.fullmatch(m["data"]) is not None,
         f"has data {m['data']!r}, not a version folder name like v000001-0a1b2c")
    files = m["files"]
    need(isinstance(files, dict), f"has files {files!r}, not an object")
    for name in REQUIRED_FILES:
        need(name in files, f"lacks files.{name}")
    for name, meta in files.items():
        need(name in ARRAY_FILES, f"lists an unknown file {name!r}")
        need(isinstance(meta, dict) and _is_int(meta.get("bytes")) and meta["bytes"] >= 0
             and isinstance(meta.get("sha256"), str) and re.fullmatch(r"[0-9a-f]{64}", meta["sha256"]) is not None,
             f"has files.{name} = {_short(meta)}, not {{\"bytes\": integer, \"sha256\": hex digest}}")
    names = m.get("class_names")
    need(names is None or (isinstance(names, list) and all(isinstance(n, str) for n in names)),
         "has class_names that are not a list of strings")
    for key in (*INFO_KEYS, "created", "updated"):
        need(m.get(key) is None or isinstance(m[key], str), f"has {key} {_short(m.get(key))}, not a string")
    retired = m.get("retired", [])
    need(isinstance(retired, list) and all(isinstance(n, str) and own_name(n) for n in retired),
         "has a retired list that is not a list of the index's own names")


def _short(value) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


# ---- the writer lock ----------------------------------------------------------------------------
# flock belongs to an open file description: a second open() of .lock in this process would wait
# for the first forever. So this process keeps one descriptor per held folder, and writers in the
# process that holds it (the service's own saves and compactions) go ahead without re-locking.
_held: dict[str, list] = {}  # realpath -> [fd, count]
_held_guard = threading.Lock()


def _key(folder: Path) -> str:
    return os.path.realpath(folder)


def busy_error(folder) -> SchnError:
    return SchnError(f"index {folder} is open for writing by another process (schn serve?); stop it or send "
                     "the change to its API")


def _acquire(folder: Path, wait_s: float, role: bytes) -> int:
    """A descriptor of ``.lock`` holding the lock; its content names the holder's ``role``
    (``held``: for a process's lifetime, so waiting for it is pointless)."""
    fd = os.open(Path(folder) / LOCK, os.O_RDWR | os.O_CREAT, 0o644)
    deadline = time.monotonic() + wait_s
    while True:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            os.ftruncate(fd, 0)
            os.pwrite(fd, role, 0)
            return fd
        except OSError as exc:
            busy = exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN)
            if not busy or time.monotonic() >= deadline or os.pread(fd, 4, 0) == b"held":
                os.close(fd)
                if busy:
                    raise busy_error(folder) from None
                raise
            time.sleep(0.02)


def hold(folder: Path, long_lived: bool = False, wait_s: float = LOCK_WAIT_S) -> None:
    """Take the writer lock of ``folder`` until :func:`release` (or the process ends). While a
    ``long_lived`` holder (``schn serve``) has it, others fail at once; while a short-lived one
    (a CLI command) has it, they wait up to ``wait_s``. Counted: two holds need two releases."""
    key = _key(folder)
    with _held_guard:
        if key in _held:
            _held[key][1] += 1
            return
        role = b"held" if long_lived else b"save"
        _held[key] = [_acquire(folder, wait_s, role + b" by pid %d\n" % os.getpid()), 1]


def release(folder: Path) -> None:
    key = _key(folder)
    with _held_guard:
        entry = _held.get(key)
        if entry is None:
            return
        entry[1] -= 1
        if entry[1] == 0:
            del _held[key]
            os.close(entry[0])  # closing the descriptor releases the lock


def holds(folder: Path) -> bool:
    return _key(folder) in _held


@contextmanager
def locked(folder: Path, wait_s: float = LOCK_WAIT_S):
    """One writer at a time per index folder (advisory, released on exit or crash). A folder this
    process holds (:func:`hold`) is already locked; anyone else waits up to ``wait_s``."""
    if holds(folder):
        yield
        return
    fd = _acquire(folder, wait_s, b"save by pid %d\n" % os.getpid())
    try:
        yield
    finally:
        os.close(fd)


def probe(folder: Path) -> None:
    """Fail now (before anything is written) if another process holds the writer lock."""
    if Path(folder).is_dir() and (Path(folder) / LOCK).exists():
        with locked(folder):
            pass


def write_pending(folder: Path, names: list[str]) -> None:
    write_json(Path(folder) / PENDING, {"names": names}, fixed_tmp=True)


def clear_pending(folder: Path, keep: set) -> None:
    """Delete what an interrupted save recorded in ``.pending.json`` (but not what is now in use)."""
    file = Path(folder) / PENDING
    if not file.is_file():
        return
    try:
        names = json.loads(file.read_text()).get("names", [])
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        names = []
    remove_own(Path(folder), [n for n in names if isinstance(n, str) and n not in keep])
    file.unlink(missing_ok=True)
