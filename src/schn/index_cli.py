"""``schn index build|add|delete|compact|info`` and ``schn search``: the command line of ``schn.index``.

A location is an index folder, a Milvus Lite file (``*.db``) or a Milvus URI (``http://host:19530``);
``--collection`` names the Milvus collection.
"""
from __future__ import annotations

import json
from contextlib import contextmanager

from .bounds import check_range
from .errors import SchnError


def _open(args, writer: bool = False):
    """The index at ``args.index``; ``writer``: a local one holds its writer lock for the whole
    command, so a command that would fail to save (``schn serve`` holds it) fails before working."""
    from .index import HammingIndex, is_milvus_location, open_index

    verify, searcher = not getattr(args, "no_verify", False), getattr(args, "searcher", "auto")
    if writer and not is_milvus_location(args.index):
        return HammingIndex.open(args.index, verify=verify, searcher=searcher, writer=True)
    return open_index(args.index, collection=getattr(args, "collection", None), verify=verify, searcher=searcher)


@contextmanager
def _writing(args):
    """The index, opened to change it; a local one's writer lock is held until the block ends."""
    from .index import HammingIndex

    index = _open(args, writer=True)
    try:
        yield index
    finally:
        if isinstance(index, HammingIndex):
            index.release_writer_lock()


def _user_ids(index, raw: list[str]):
    """Command-line ids in the index's kind (integers for an index of integer ids)."""
    if index.id_kind != "int":
        return raw
    try:
        return [int(v) for v in raw]
    except ValueError:
        raise SchnError(f"this index has integer ids; {raw} are not integers") from None


def cmd_index_build(args) -> int:
    from .index.build import build_index

    index = build_index(args.run, args.output, images=args.images, collection=args.collection,
                        overwrite=args.overwrite, device=args.device, progress=not args.quiet,
                        store_images=args.store_images)
    print(f"index {args.output}: {len(index)} items, {index.bits}-bit codes, method {index.info.get('method')}")
    return 0


def cmd_index_add(args) -> int:
    from .index.build import encode_for_index

    with _writing(args) as index:
        packed, files = encode_for_index(index, args.paths, run_dir=args.run, device=args.device, progress=not args.quiet)
        ids, paths = [str(p) for p in files], [str(p.resolve()) for p in files]
        if args.store_images:
            from .index import HammingIndex
            from .index.images import store_all

            if not isinstance(index, HammingIndex):
                raise SchnError("--store-images needs a local index folder, not a Milvus location")
            paths = store_all(args.index, files)  # durable before the index that refers to them is saved
        if args.upsert:
            replaced, added = index.upsert(packed, ids=ids, paths=paths)
        else:
            index.add(packed, ids=ids, paths=paths)
            replaced, added = 0, len(files)
        index.save()
        print(f"index {args.index}: added {added}, replaced {replaced}; {len(index)} items")
    return 0


def cmd_index_delete(args) -> int:
    with _writing(args) as index:
        removed = index.delete(_user_ids(index, args.ids), missing="ignore" if args.missing_ok else "error")
        index.save()
        print(f"index {args.index}: removed {removed}; {len(index)} items")
    return 0


def cmd_index_compact(args) -> int:
    from .index import is_milvus_location

    if is_milvus_location(args.index):
        raise SchnError("compact is for local index folders; Milvus compacts its own collections")
    with _writing(args) as index:
        folded = index.journal_items
        index.compact()
        print(f"index {args.index}: folded {folded} journaled changes into version {index.version}; {len(index)} items")
    return 0


def cmd_index_info(args) -> int:
    print(json.dumps(_open(args).describe(), indent=2, default=str))
    return 0


def cmd_search(args) -> int:
    if (args.image is None) == (args.id is None):
        raise SchnError("pass exactly one of --image PATH or --id ID")
    check_range("-k", args.k, 1, 10**9)
    if args.radius is not None:
        check_range("--radius", args.radius, 0, 10**9)
    index = _open(args)
    if args.image is not None:
        from .index.build import encode_for_index

        query, codes = args.image, encode_for_index(index, [args.image], run_dir=args.run, device=args.device)[0]
    else:
        query, codes = _user_ids(index, [args.id])[0], None  # searched by id: the item itself is left out
    if args.radius is not None:
        found = index.radius_search(index.codes_of([query]) if codes is None else codes, args.radius)[0]
        keep = found.ids != query if codes is None else slice(None)
        ids, dists = found.ids[keep].tolist(), found.distances[keep].tolist()
    else:
        found = index.search_ids([query], args.k) if codes is None else index.search(codes, args.k)
        ids, dists = found.ids[0].tolist(), found.distances[0].tolist()
    rows = result_rows(index, ids, dists)
    if args.json:
        print(json.dumps({"query": str(query), "results": rows}, indent=2))
    else:
        print_neighbors(f"query {query}: {len(ids)} results from {len(index)} items ({index.bits}-bit codes)", rows)
    return 0


def result_rows(index, ids, dists) -> list[dict]:
    """rank, distance, id, label and path of each result."""
    return [{"rank": r + 1, "distance": d, **item} for r, (d, item) in enumerate(zip(dists, index.items(ids)))]


def print_neighbors(title: str, rows: list[dict]) -> None:
    """A title, then one aligned line per result row."""
    print(title)
    width = max([len(str(r["id"])) for r in rows] + [2])
    print(f"{'rank':>4}  {'id':<{width}}  {'dist':>4}  {'label':<12}  path")
    for r in rows:
        print(f"{r['rank']:>4}  {str(r['id']):<{width}}  {r['distance']:>4}  {r['label']:<12}  {r['path']}")


def add_index_commands(sub) -> None:
    def location(p):
        p.add_argument("index", help="index folder, Milvus Lite file (*.db) or Milvus URI")
        p.add_argument("--collection", default=None, help="Milvus collection (default schn_codes)")

    def encoding(p, run: bool = True, quiet: bool = True):
        """Options of commands that may run the model."""
        if run:
            p.add_argument("--run", default=None, help="the run that built the index, if it moved")
        p.add_argument("--device", default=None)
        if quiet:
            p.add_argument("--quiet", action="store_true", help="no progress bars")

    index = sub.add_parser("index", help="build, extend and inspect a Hamming index").add_subparsers(
        dest="index_command", required=True)
    p = index.add_parser("build", help="index a run's database codes (default) or image files")
    p.add_argument("run")
    p.add_argument("-o", "--output", required=True, help="index folder, Milvus Lite file (*.db) or Milvus URI")
    p.add_argument("--images", nargs="+", default=None, help="image files or folders, encoded by the run's network")
    p.add_argument("--collection", default=None)
    p.add_argument("--overwrite", action="store_true", help="replace an index already there")
    p.add_argument("--store-images", action="store_true",
                   help="copy every item's image into IDX/images/, which `schn serve` shows (local indexes)")
    encoding(p, run=False)
    p.set_defaults(func=cmd_index_build)

    p = index.add_parser("add", help="encode image files or folders and add them (ids: the paths as given)")
    location(p)
    p.add_argument("paths", nargs="+")
    p.add_argument("--upsert", action="store_true", help="replace items whose id is already there")
    p.add_argument("--store-images", action="store_true", help="copy the images into IDX/images/ (shown by schn serve)")
    encoding(p)
    p.set_defaults(func=cmd_index_add)

    p = index.add_parser("delete", help="remove items by id")
    location(p)
    p.add_argument("ids", nargs="+")
    p.add_argument("--missing-ok", action="store_true", help="ignore ids that are not there")
    p.set_defaults(func=cmd_index_delete)

    p = index.add_parser("compact", help="fold the journal of changes into a new base version (local indexes)")
    p.add_argument("index", help="index folder")
    p.add_argument("--no-verify", action="store_true", help="skip the checksum check of the files")
    p.set_defaults(func=cmd_index_compact)

    p = index.add_parser("info", help="what the index holds and where its codes came from")
    location(p)
    p.add_argument("--no-verify", action="store_true", help="skip the checksum check of the files")
    p.set_defaults(func=cmd_index_info)

    p = sub.add_parser("search", help="the nearest items of an image or of a stored item")
    location(p)
    p.add_argument("--image", default=None, help="query image, encoded by the index's run")
    p.add_argument("--id", default=None, help="query by a stored item's id (the item itself is left out)")
    p.add_argument("-k", type=int, default=10, help="number of neighbours (default 10)")
    p.add_argument("--radius", type=int, default=None, help="every item within this Hamming distance (inclusive) instead")
    # one query from a fresh process: a flat scan beats building multi-index hashing's tables
    p.add_argument("--searcher", default="faiss", help="faiss (default), mih, numpy or auto (local indexes)")
    encoding(p, quiet=False)
    p.add_argument("--json", action="store_true", help="results as JSON")
    p.set_defaults(func=cmd_search)
