"""Where image files live: a folder, or a tar archive read without unpacking."""
from __future__ import annotations

import io
import os
import tarfile

from PIL import Image

from ..errors import SchnError

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
ARCHIVE_EXTENSIONS = (".tar", ".tar.gz", ".tgz")
# Compressed archives cannot be seeked into, so their images are held in memory; refuse sizes
# that would not fit comfortably and ask for an unpacked folder instead.
_MAX_COMPRESSED_BYTES = 4 << 30


def is_image(path: str) -> bool:
    name = path.rsplit("/", 1)[-1]
    # skip hidden files such as macOS "._x.jpg" resource forks
    return not name.startswith(".") and name.lower().endswith(IMAGE_EXTENSIONS)


def is_archive(path: str) -> bool:
    return os.path.isfile(path) and path.lower().endswith(ARCHIVE_EXTENSIONS)


class FolderSource:
    """Image files under a folder; relative paths use '/'."""

    def __init__(self, root: str):
        self.root = root

    def describe(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def exists(self, rel: str) -> bool:
        return os.path.isfile(os.path.join(self.root, rel))

    def image_paths(self) -> list[str]:
        found = []
        for folder, dirs, files in os.walk(self.root, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX")
            rel = os.path.relpath(folder, self.root).replace(os.sep, "/")
            prefix = "" if rel == "." else rel + "/"
            found += [prefix + f for f in sorted(files) if is_image(f)]
        return found

    def open(self, rel: str) -> Image.Image:
        return Image.open(os.path.join(self.root, rel))


class ArchiveSource:
    """Images inside a .tar/.tar.gz/.tgz, scanned once.

    Compressed archives keep every image's bytes in memory; plain tars keep offsets and open
    the file lazily per process, so forked DataLoader workers never share a file handle.
    """

    def __init__(self, path: str):
        self.path = path
        self.compressed = not path.lower().endswith(".tar")
        if self.compressed and os.path.getsize(path) > _MAX_COMPRESSED_BYTES:
            raise SchnError(f"{path} is too large to read compressed; "
                            "unpack it and set data.root to the folder")
        self.members: dict[str, bytes | tuple[int, int]] = {}
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    if m.isfile() and is_image(name) and "__MACOSX/" not in name:
                        if self.compressed:
                            self.members[name] = tar.extractfile(m).read()
                        else:
                            self.members[name] = (m.offset_data, m.size)
        except (tarfile.TarError, OSError, EOFError) as e:
            raise SchnError(f"cannot read archive {path}: {e}; re-download or unpack it") from None
        self._handle = None
        self._pid = None

    def describe(self, rel: str) -> str:
        return f"{self.path}:{rel}"

    def exists(self, rel: str) -> bool:
        return rel in self.members

    def image_paths(self) -> list[str]:
        return sorted(self.members)

    def read(self, rel: str) -> bytes:
        entry = self.members[rel]
        if isinstance(entry, bytes):
            return entry
        if self._pid != os.getpid():  # first read in this process (e.g. a fresh worker)
            self._handle, self._pid = open(self.path, "rb"), os.getpid()
        offset, size = entry
        self._handle.seek(offset)
        return self._handle.read(size)

    def open(self, rel: str) -> Image.Image:
        return Image.open(io.BytesIO(self.read(rel)))

    def __getstate__(self):
        # spawned workers reopen the file themselves
        state = dict(self.__dict__)
        state["_handle"] = state["_pid"] = None
        return state


def open_source(root: str):
    return ArchiveSource(root) if is_archive(root) else FolderSource(root)
