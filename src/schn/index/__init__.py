"""Hamming search over packed binary codes: exact k-NN and radius search, persisted indexes.

- :class:`HammingIndex` (backend ``local``): codes + unique ids + labels/paths in a folder;
  add, delete, upsert; searched by a registered searcher: ``numpy`` (reference), ``faiss``
  (``IndexBinaryFlat``) or ``mih`` (multi-index hashing). All are exact and give identical results;
  distance ties are broken by id.
- ``milvus`` backend: the same API on a Milvus collection (Milvus Lite file or server URI).
- :func:`open_index` opens either from a location.
"""
from . import milvus  # noqa: F401  registers the milvus backend; pymilvus is imported only when used
from .base import CodeIndex, Neighbors, create_index_backend, is_milvus_location, list_index_backends
from .mih import MultiIndexHashing
from .searchers import Searcher, create_searcher, list_searchers
from .store import HammingIndex

__all__ = ["CodeIndex", "HammingIndex", "Neighbors", "Searcher", "MultiIndexHashing", "create_searcher",
           "list_searchers", "create_index_backend", "list_index_backends", "open_index", "is_milvus_location"]


def open_index(location, *, collection: str | None = None, verify: bool = True, searcher: str = "auto") -> CodeIndex:
    """Open an existing index: a local folder, or a Milvus collection (see ``is_milvus_location``)."""
    if is_milvus_location(location):
        return milvus.MilvusIndex.open(location, collection=collection)
    return HammingIndex.open(location, verify=verify, searcher=searcher)
