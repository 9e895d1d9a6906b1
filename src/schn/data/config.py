"""Typed options of the data layer: which reader reads what, and how the split is drawn."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

from ..bounds import bounded
from ..errors import SchnError


def _choice(field_name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise SchnError(f"{field_name}={value!r} is not one of {', '.join(choices)}")


@dataclass
class DataConfig:
    # reader registry name: digits, cifar10_python, image_folder, image_list, mnist_idx
    name: str = "digits"
    # folder (or, for image_folder, a .tar/.tar.gz/.tgz archive); unused by digits
    root: str = ""
    # image_folder: sub-roots to merge (e.g. ["train", "test"]); each item's group is its subdir
    subdirs: list[str] = field(default_factory=list)
    # image_list: [image_list_file, label_file] pairs; empty = auto-detect the known file names
    lists: list[list[str]] = field(default_factory=list)
    label_format: str = "auto"  # auto | onehot | indices
    num_classes: Optional[int] = bounded(None, 1, 10**6)  # for index labels; inferred as max+1 when unset
    class_names_file: Optional[str] = None  # one class name per line, overrides the reader's
    unlabeled: str = "drop"  # drop | keep items without any label
    on_bad_image: str = "error"  # error | skip missing or corrupt images
    check_images: bool = False  # decode every image up front

    def check(self) -> None:
        _choice("data.label_format", self.label_format, ("auto", "onehot", "indices"))
        _choice("data.unlabeled", self.unlabeled, ("drop", "keep"))
        _choice("data.on_bad_image", self.on_bad_image, ("error", "skip"))
        if self.num_classes is not None and self.num_classes < 1:
            raise SchnError(f"data.num_classes={self.num_classes} must be >= 1 (or unset)")


@dataclass
class SplitConfig:
    # Named protocols (schn.data.splits; `schn list` shows them), as the toolkits name them:
    #   cifar10       DeepHash-pytorch: 100 queries + 500 training items per class, the rest
    #                 = database (training is disjoint from the database)
    #   cifar10-1     100 queries per class, the rest = database; 500 per class of the database train
    #   cifar10-2     queries = group "test" (10,000), database = training = group "train" (50,000)
    #   cifar10-adsh  SCHN/ADSH: 100 queries per class, the rest = database = training pool
    #   nuswide21     100 queries + 500 training items per concept (distinct items), the rest =
    #                 database; training drawn from the database
    #   mirflickr25k  FIRe: 1,000 random queries, the rest = database, 4,000 of it train
    #   mirflickr25k-adsh  1,000 random queries, the rest = database = training pool
    #   lists         queries / database / training from list-file groups (NUS-WIDE's list
    #                 files, HashNet's ImageNet-100 and MS-COCO train/database/test lists)
    #   per_class, random  the generic ones behind cifar10-adsh and mirflickr25k-adsh
    protocol: str = "per_class"
    query_per_class: float = bounded(100, 0, 10**9, above=True)  # int = items per class; a float < 1 = fraction of each class
    # training items drawn per class (cifar10, cifar10-1, nuswide21, per_class); None = the
    # protocol's published number (500; per_class: 0 = the whole database trains)
    train_per_class: Optional[int] = bounded(None, 0, 10**9)
    query_size: int = bounded(1000, 1, 10**9)  # mirflickr25k / random
    query_group: str = "test_img"  # lists (HashNet's lists: "test")
    database_group: str = "database_img"  # lists; "" = every item not in the query group
    # lists: group of the training list ("train" for HashNet's lists); "" = the database trains.
    # A training item whose path is also a database item's is that database item (one item,
    # both roles); the others train from outside the database.
    train_group: str = ""
    # Items carved for model selection, never from the queries. When the protocol fixes a
    # training set (cifar10, cifar10-1, nuswide21, lists with train_group, per_class with
    # train_per_class): from database items outside training when there are enough of them
    # (published training sizes are kept), else from the training set (removed from it).
    # Otherwise: at random from the database, the rest of which trains.
    val_size: int = bounded(0, 0, 10**9)
    # training set size: 0 = the protocol's (mirflickr25k: FIRe's 4,000; else all: the database
    # minus val, or the protocol's fixed training set minus val); else a random subset of that
    train_size: int = bounded(0, 0, 10**9)
    seed: int = bounded(0, 0, 2**32 - 1)
    file: Optional[str] = None  # reload this saved split instead of drawing one
    seeded: bool = True  # False = authors' unseeded NumPy draw (OS entropy)

    def check(self) -> None:
        for name in ("val_size", "train_size", "train_per_class"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise SchnError(f"split.{name} must be >= 0, got {value}")
        if self.query_per_class <= 0 or self.query_size <= 0:
            raise SchnError("split.query_per_class and split.query_size must be > 0")
