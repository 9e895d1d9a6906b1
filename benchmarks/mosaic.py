"""A multi-label benchmark from real pixels: 2x2 mosaics of CIFAR-10 (JPEG) images.

    .venv/bin/python benchmarks/mosaic.py --out benchmarks/.work/mosaic --n 10000 --seed 0 \\
        --source ../shared/data/cifar10-jpg.tar.gz
    .venv/bin/python -m schn train --config configs/mosaic.yaml

Each mosaic is 64x64: four 32x32 CIFAR-10 images in a 2x2 grid, holding 1 to 4 distinct classes
(the number of distinct classes uniform over 1..4, the classes uniform without replacement; when
fewer than 4 classes, the spare tiles are further images of classes already in it; tile
positions shuffled). Its labels are the 0/1 vector of the classes it contains. Tiles are drawn
without replacement within each class (all of the source's images of that class, train and
test, in a seeded order) until a class runs out, then that class's order is redrawn: at 10,000
mosaics (~4,000 tiles per class of 6,000) no CIFAR image appears twice.

Output, the NUS-WIDE list-file layout that the image_list reader auto-detects:
    OUT/images/000000.jpg ...          the mosaics (JPEG, --quality)
    OUT/database_img.txt               one path per line, relative to OUT
    OUT/database_label_onehot.txt      one 0/1 row per line, one column per class
    OUT/classes.txt                    the class names, one per line (data.class_names_file)
    OUT/tiles.txt                      per mosaic, its four source images (top-left, top-right,
                                       bottom-left, bottom-right), for provenance
    OUT/mosaic.json                    seed, n, source, counts
The source (a .tar/.tar.gz/.tgz archive or a folder, either laid out as <split>/<class>/<image>
like shared/data/cifar10-jpg.tar.gz, or <class>/<image>) is read in memory, never extracted.
Not part of the package: a generator for a benchmark.
"""
from __future__ import annotations

import argparse
import io
import json
import os
import sys
import tarfile
import time
from collections import defaultdict

import numpy as np
from PIL import Image

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".bmp", ".webp")
TILE = 32
MAX_CLASSES = 4  # a 2x2 mosaic holds at most 4 classes


class MosaicError(Exception):
    pass


def _is_image(name: str) -> bool:
    base = os.path.basename(name)
    return not base.startswith(".") and base.lower().endswith(IMAGE_EXTENSIONS)


def read_source(path: str) -> dict[str, list[tuple[str, bytes]]]:
    """class name -> [(path inside the source, encoded bytes)], sorted by path; the class is the
    image's parent folder."""
    found: dict[str, list[tuple[str, bytes]]] = defaultdict(list)
    if os.path.isdir(path):
        for dirpath, dirs, files in os.walk(path):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for f in files:
                if _is_image(f):
                    full = os.path.join(dirpath, f)
                    rel = os.path.relpath(full, path).replace(os.sep, "/")
                    if "/" not in rel:
                        continue  # an image at the top level has no class folder
                    with open(full, "rb") as fh:
                        found[rel.split("/")[-2]].append((rel, fh.read()))
    elif os.path.isfile(path):
        try:
            with tarfile.open(path, "r:*") as tar:
                for m in tar:
                    name = m.name[2:] if m.name.startswith("./") else m.name
                    if m.isfile() and _is_image(name) and "/" in name:
                        found[name.split("/")[-2]].append((name, tar.extractfile(m).read()))
        except (tarfile.TarError, OSError, EOFError) as e:
            raise MosaicError(f"cannot read {path} as a tar archive ({e}); give a .tar/.tar.gz or a folder")
    else:
        raise MosaicError(f"source {path} does not exist")
    if len(found) < 2:
        raise MosaicError(f"source {path} holds {len(found)} class folder(s) of images; need at least 2 "
                          "(<split>/<class>/<image> or <class>/<image>)")
    return {c: sorted(found[c]) for c in sorted(found)}


def draw_layout(n: int, n_classes: int, rng: np.random.Generator) -> np.ndarray:
    """(n, 4) class of each tile (top-left, top-right, bottom-left, bottom-right): the number of
    distinct classes uniform over 1..min(4, n_classes), those classes without replacement, the
    spare tiles from the same classes, positions shuffled."""
    most = min(MAX_CLASSES, n_classes)
    layout = np.zeros((n, 4), dtype=np.int64)
    for i in range(n):
        k = int(rng.integers(1, most + 1))
        classes = rng.choice(n_classes, k, replace=False)
        tiles = np.concatenate([classes, rng.choice(classes, 4 - k)])
        layout[i] = rng.permutation(tiles)
    return layout


class TileQueue:
    """Images of each class without replacement, in a seeded order redrawn when a class runs out."""

    def __init__(self, sizes: list[int], rng: np.random.Generator):
        self.sizes, self.rng = sizes, rng
        self.orders = [rng.permutation(s) for s in sizes]
        self.pos = [0] * len(sizes)
        self.redraws = 0

    def take(self, c: int) -> int:
        if self.pos[c] == self.sizes[c]:
            self.orders[c], self.pos[c] = self.rng.permutation(self.sizes[c]), 0
            self.redraws += 1
        j = int(self.orders[c][self.pos[c]])
        self.pos[c] += 1
        return j


def _tile(data: bytes, where: str) -> Image.Image:
    try:
        img = Image.open(io.BytesIO(data))
        img.load()
    except Exception as e:  # PIL raises many kinds for a corrupt file
        raise MosaicError(f"cannot decode {where}: {e}") from None
    img = img.convert("RGB")
    return img if img.size == (TILE, TILE) else img.resize((TILE, TILE), Image.BILINEAR)


def build(out: str, n: int, seed: int, source: str, quality: int = 95, force: bool = False) -> dict:
    if n < 1:
        raise MosaicError(f"--n must be >= 1, got {n}")
    if not 1 <= quality <= 100:
        raise MosaicError(f"--quality must be 1..100, got {quality}")
    if os.path.isdir(out) and os.listdir(out) and not force:
        raise MosaicError(f"{out} is not empty; give an empty or new folder (or --force to overwrite)")
    start = time.perf_counter()
    images = read_source(source)
    names = list(images)
    rng = np.random.default_rng(seed)
    layout = draw_layout(n, len(names), rng)
    queue = TileQueue([len(images[c]) for c in names], rng)
    os.makedirs(os.path.join(out, "images"), exist_ok=True)
    paths, rows, tiles = [], [], []
    used = set()
    for i in range(n):
        canvas = Image.new("RGB", (2 * TILE, 2 * TILE))
        sources = []
        for pos, c in enumerate(layout[i]):
            where, data = images[names[c]][queue.take(int(c))]
            canvas.paste(_tile(data, where), ((pos % 2) * TILE, (pos // 2) * TILE))
            sources.append(where)
            used.add(where)
        rel = f"images/{i:06d}.jpg"
        canvas.save(os.path.join(out, rel), format="JPEG", quality=quality)
        label = np.zeros(len(names), dtype=np.int64)
        label[np.unique(layout[i])] = 1
        paths.append(rel)
        rows.append(" ".join(map(str, label)))
        tiles.append(" ".join([rel] + sources))
    labels = np.asarray([[int(v) for v in r.split()] for r in rows])
    files = {"database_img.txt": paths, "database_label_onehot.txt": rows, "classes.txt": names,
             "tiles.txt": tiles}
    for name, lines in files.items():
        with open(os.path.join(out, name), "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
    per_count = np.bincount(labels.sum(axis=1), minlength=MAX_CLASSES + 1)[1:].tolist()
    meta = {"n": n, "seed": seed, "source": os.path.abspath(source), "quality": quality,
            "size": [2 * TILE, 2 * TILE], "classes": names,
            "mosaics_per_class": labels.sum(axis=0).tolist(),
            "mosaics_by_number_of_classes": dict(zip(range(1, MAX_CLASSES + 1), per_count)),
            "source_images": sum(len(v) for v in images.values()), "source_images_used": len(used),
            "class_order_redraws": queue.redraws, "seconds": round(time.perf_counter() - start, 1)}
    with open(os.path.join(out, "mosaic.json"), "w", encoding="utf-8") as f:
        json.dump(meta, f, indent=1)
        f.write("\n")
    return meta


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="mosaic", description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True, help="output folder (new or empty)")
    p.add_argument("--n", type=int, default=10000, help="number of mosaics (default 10000)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--source", default="../shared/data/cifar10-jpg.tar.gz",
                   help="CIFAR-10 (JPEG) archive or folder: <split>/<class>/<image> or <class>/<image>")
    p.add_argument("--quality", type=int, default=95, help="JPEG quality of the mosaics")
    p.add_argument("--force", action="store_true", help="write into a non-empty --out")
    args = p.parse_args(argv)
    try:
        meta = build(args.out, args.n, args.seed, args.source, args.quality, args.force)
    except MosaicError as e:
        print(f"mosaic: error: {e}", file=sys.stderr)
        return 2
    out = args.out
    print(f"wrote {meta['n']} mosaics {meta['size'][0]}x{meta['size'][1]} (seed {meta['seed']}) to "
          f"{out}/images/, {out}/database_img.txt, {out}/database_label_onehot.txt "
          f"({len(meta['classes'])} columns), {out}/classes.txt, {out}/tiles.txt, {out}/mosaic.json "
          f"in {meta['seconds']} s")
    print(f"classes per mosaic 1..4: {list(meta['mosaics_by_number_of_classes'].values())}; "
          f"mosaics per class: {meta['mosaics_per_class']}; source images used "
          f"{meta['source_images_used']} of {meta['source_images']}, class orders redrawn "
          f"{meta['class_order_redraws']} times")
    return 0


if __name__ == "__main__":
    sys.exit(main())
