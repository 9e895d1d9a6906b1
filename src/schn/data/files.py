"""Readers of image files: class folders (or an archive of them) and list files."""
from __future__ import annotations

import hashlib
import os
from collections import Counter
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import SchnError
from .config import DataConfig
from .dataset import DATASETS, HashingDataset, read_class_names, tidy_labels
from .sources import FolderSource, open_source

# Decode errors PIL raises for missing, truncated or foreign files.
# what PIL raises for a missing, truncated, corrupt or oversized (decompression bomb) image
IMAGE_ERRORS = (OSError, SyntaxError, ValueError, Image.DecompressionBombError)
_GREY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


class FileDataset(HashingDataset):
    """Items are image files in a source; ``ids`` are their paths relative to the root."""

    def __init__(self, source, paths, labels, class_names, groups, cfg: DataConfig,
                 fingerprint_files, report: dict[str, int]):
        paths, labels, groups = list(paths), np.asarray(labels, np.uint8), np.asarray(groups, str)
        keep, more = tidy_labels(cfg, labels)
        report = {**report, **more}
        good = np.array([self._usable(source, p, cfg) for p in paths], dtype=bool)
        report["bad_images_skipped"] = int((keep & ~good).sum())
        keep &= good
        self.source = source
        self.paths = [p for p, k in zip(paths, keep) if k]
        if cfg.class_names_file:
            class_names = read_class_names(cfg.class_names_file, labels.shape[1])
        options = {
            "reader": cfg.name, "subdirs": cfg.subdirs, "lists": cfg.lists,
            "label_format": cfg.label_format, "unlabeled": cfg.unlabeled,
            "on_bad_image": cfg.on_bad_image, "check_images": cfg.check_images,
            "names": list(class_names),
            "ids": hashlib.sha256("\n".join(self.paths).encode()).hexdigest(),
        }
        super().__init__(labels[keep], class_names, self.paths, groups[keep], 3,
                         fingerprint_files, options, report)
        self.channels = self._guess_channels()

    @staticmethod
    def _usable(source, path: str, cfg: DataConfig) -> bool:
        """Up-front check of one file: existence always, full decode with check_images."""
        problem = None
        if not source.exists(path):
            problem = "does not exist"
        elif cfg.check_images:
            try:
                with source.open(path) as img:
                    img.load()
            except IMAGE_ERRORS as e:
                problem = f"cannot be decoded ({e})"
        if problem and cfg.on_bad_image == "error":
            raise SchnError(f"image {source.describe(path)} {problem}; fix it or set data.on_bad_image=skip")
        return problem is None

    def _guess_channels(self) -> int:
        # grey only if every sampled image is grey: colour sets hold a few grey JPEGs
        seen_grey = False
        for i in np.linspace(0, len(self) - 1, min(len(self), 20)).round().astype(int):
            try:
                with self.source.open(self.paths[i]) as img:
                    if img.mode not in _GREY_MODES:
                        return 3
                    seen_grey = True
            except IMAGE_ERRORS:
                continue  # a bad file says nothing about the others
        return 1 if seen_grey else 3

    def load_image(self, i: int) -> Image.Image:
        path = self.paths[i]
        try:
            with self.source.open(path) as img:
                return img.convert("L" if self.channels == 1 else "RGB")
        except IMAGE_ERRORS as e:
            raise SchnError(
                f"cannot read image {self.source.describe(path)} ({e}); to skip bad images set "
                "--set data.on_bad_image=skip --set data.check_images=true"
            ) from None


# ---- image_folder: root/[subdir/]<class>/<image> -------------------------------------------
def _strip_prefix(paths: list[str], depth: int) -> list[str]:
    """Drop single top folders (e.g. an archive's 'cifar10/') while paths are deeper than needed."""
    while paths and all(p.count("/") > depth for p in paths):
        tops = {p.split("/", 1)[0] for p in paths}
        if len(tops) != 1:
            break
        paths = [p.split("/", 1)[1] for p in paths]
    return paths


@DATASETS.register("image_folder")
def read_image_folder(cfg: DataConfig) -> HashingDataset:
    source = open_source(cfg.root)
    found = source.image_paths()
    if not found:
        raise SchnError(f"no images ({', '.join(('jpg', 'jpeg', 'png', 'bmp', 'webp'))}) found in {cfg.root}")
    subdirs = list(cfg.subdirs)
    # depth = number of '/' in "subdir/class/file" or "class/file"
    if subdirs:
        rel = _strip_prefix(found, 2)
    else:
        rel = _strip_prefix(found, 1)
        if all(p.count("/") == 2 for p in rel):  # e.g. train/<class>/x, test/<class>/x
            subdirs = sorted({p.split("/", 1)[0] for p in rel})
    prefix = found[0][: len(found[0]) - len(rel[0])]
    depth = 2 if subdirs else 1
    wrong = [p for p in rel if p.count("/") != depth]
    if wrong and not subdirs:
        raise SchnError(f"{cfg.root}: expected <class>/<image>, found {prefix}{wrong[0]}; "
                        "set data.subdirs or fix the layout")
    per_group: dict[str, dict[str, list[str]]] = {}
    for p in rel:
        parts = p.split("/")
        group = parts[0] if subdirs else "all"
        if (subdirs and group not in subdirs) or len(parts) != depth + 1:
            continue
        per_group.setdefault(group, {}).setdefault(parts[-2], []).append(p)
    for group in subdirs:
        if group not in per_group:
            raise SchnError(f"{cfg.root}: no images under sub-folder {group!r} (data.subdirs)")
    class_sets = {g: sorted(c) for g, c in per_group.items()}
    names = next(iter(class_sets.values()))
    for g, c in class_sets.items():
        if c != names:
            raise SchnError(f"{cfg.root}: class folders differ between sub-folders: {g} has "
                            f"{sorted(set(c) ^ set(names))} unlike the others")
    paths, classes, groups = [], [], []
    for group in (subdirs or ["all"]):
        for k, name in enumerate(names):
            files = sorted(per_group[group][name])
            paths += [prefix + f for f in files]
            classes += [k] * len(files)
            groups += [group] * len(files)
    labels = np.zeros((len(paths), len(names)), np.uint8)
    labels[np.arange(len(paths)), classes] = 1
    return FileDataset(source, paths, labels, names, groups, cfg, [cfg.root], {})


# ---- image_list: image list + label file, line-aligned -------------------------------------
KNOWN_LISTS = [  # (image list, label file candidates) of NUS-WIDE and MIRFlickr-25K releases
    ("database_img.txt", ("database_label_onehot.txt", "database_label.txt")),
    ("test_img.txt", ("test_label_onehot.txt", "test_label.txt")),
    ("db_image.txt", ("database_label.txt",)),
    ("test_image_m.txt", ("test_label.txt",)),
]
# HashNet's ImageNet-100 / MS-COCO releases: one file per part, each line "path l0 l1 ... lK-1"
KNOWN_COMBINED = ("database.txt", "test.txt", "train.txt")


def _known_lists(root: str) -> list[list[str]]:
    pairs = []
    for images, label_files in KNOWN_LISTS:
        label = next((f for f in label_files if os.path.isfile(os.path.join(root, f))), None)
        if os.path.isfile(os.path.join(root, images)) and label:
            pairs.append([images, label])
    if not pairs:
        pairs = [[f] for f in KNOWN_COMBINED if os.path.isfile(os.path.join(root, f))]
    if not pairs:
        names = ", ".join(f"{i} + {'/'.join(l)}" for i, l in KNOWN_LISTS)
        raise SchnError(f"no known list files in {root} ({names}; or {', '.join(KNOWN_COMBINED)} "
                        "with 'path labels' lines); set data.lists=[[images.txt, labels.txt]] or [[list.txt]]")
    return pairs


def _read_lines(path: str) -> list[str]:
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise SchnError(f"cannot read list file {path}: {e.strerror}") from None
    while lines and not lines[-1].strip():
        lines.pop()
    return lines


def _parse_rows(path: str, lines: list[str] | None = None) -> list[list[int]]:
    rows = []
    for lineno, line in enumerate(_read_lines(path) if lines is None else lines, 1):
        try:
            values = [float(v) for v in line.split()]
        except ValueError:
            raise SchnError(f"{path} line {lineno}: label values must be numbers, "
                            f"got {line[:60]!r}") from None
        if any(v != int(v) or v < 0 for v in values):
            raise SchnError(f"{path} line {lineno}: label values must be non-negative integers")
        rows.append([int(v) for v in values])
    return rows


def _label_format(rows: list[list[int]], cfg: DataConfig) -> str:
    if cfg.label_format != "auto":
        return cfg.label_format
    # 0/1 everywhere reads as rows of a label matrix; any larger value means class indices
    return "indices" if any(v > 1 for row in rows for v in row) else "onehot"


def _resolve(root: str, path: str) -> str:
    return path if os.path.isabs(path) else os.path.join(root, path)


@DATASETS.register("image_list")
def read_image_list(cfg: DataConfig) -> HashingDataset:
    if not os.path.isdir(cfg.root):
        raise SchnError(f"data root {cfg.root} must be a folder for image_list")
    pairs = cfg.lists or _known_lists(cfg.root)
    parsed = []  # (group, image list path, image paths, label file, rows, format)
    for pair in pairs:
        if len(pair) not in (1, 2):
            raise SchnError(f"data.lists entry {pair} must be [image_list_file, label_file] or "
                            "[list_file] with 'path labels' lines")
        if len(pair) == 1:  # HashNet: "path l0 l1 ... lK-1" (a path holds no whitespace)
            image_file = label_file = _resolve(cfg.root, pair[0])
            lines = _read_lines(image_file)
            images = [(line.split() or [""])[0] for line in lines]
            for lineno, path in enumerate(images, 1):
                if not path:
                    raise SchnError(f"{image_file} line {lineno} is blank; each line must be 'path labels'")
            rows = _parse_rows(label_file, [line.strip()[len(path):] for line, path in zip(lines, images)])
        else:
            image_file, label_file = (_resolve(cfg.root, p) for p in pair)
            images = [line.strip() for line in _read_lines(image_file)]
            rows = _parse_rows(label_file)
        if len(rows) < len(images) and cfg.label_format != "onehot":
            rows += [[]] * (len(images) - len(rows))  # blank trailing lines = unlabeled items
        if len(rows) != len(images):
            raise SchnError(f"{image_file} lists {len(images)} images but {label_file} "
                            f"has {len(rows)} label rows")
        parsed.append((Path(image_file).stem, image_file, images, label_file, rows, _label_format(rows, cfg)))

    # the usual row width, so that the error names the odd rows rather than all others
    widths = Counter(len(r) for *_, rows, fmt in parsed if fmt == "onehot" for r in rows)
    if cfg.num_classes:
        k = cfg.num_classes
    elif widths:
        k = widths.most_common(1)[0][0]
    else:
        k = 1 + max((max(r) for *_, rows, _ in parsed for r in rows if r), default=0)
    labels, paths, groups = [], [], []
    for group, image_file, images, label_file, rows, fmt in parsed:
        block = np.zeros((len(rows), k), np.uint8)
        for lineno, row in enumerate(rows, 1):
            if fmt == "onehot":
                if len(row) != k:
                    raise SchnError(
                        f"{label_file} line {lineno}: {len(row)} label columns, expected {k}; fix the row"
                        " (or set data.label_format=indices if lines hold class indices)")
                block[lineno - 1] = row
            else:
                if row and max(row) >= k:
                    raise SchnError(f"{label_file} line {lineno}: class index {max(row)} >= {k} classes; "
                                    "set data.num_classes")
                block[lineno - 1, row] = 1
        labels.append(block)
        paths += images
        groups += [group] * len(images)
    names = [str(c) for c in range(k)]
    source = FolderSource(cfg.root)
    files = list(dict.fromkeys(p for _, image_file, _, label_file, *_ in parsed for p in (image_file, label_file)))
    return FileDataset(source, paths, np.concatenate(labels), names, groups, cfg, files, {})
