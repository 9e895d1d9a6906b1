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
    # cifar10 | nuswide21 | mirflickr25k | per_class | random
    protocol: str = "cifar10"
    query_per_class: float = bounded(100, 0, 10**9, above=True)  # int = items per class; a float < 1 = fraction of each class
    query_size: int = bounded(1000, 1, 10**9)  # mirflickr25k / random
    query_group: str = "test_img"  # nuswide21
    database_group: str = "database_img"  # nuswide21; "" = every item not in the query group
    val_size: int = bounded(0, 0, 10**9)  # items carved at random from the database for model selection
    train_size: int = bounded(0, 0, 10**9)  # 0 = whole database minus val; else a random subset of it
    seed: int = bounded(0, 0, 2**32 - 1)
    file: Optional[str] = None  # reload this saved split instead of drawing one
    seeded: bool = True  # False = authors' unseeded NumPy draw (OS entropy)

    def check(self) -> None:
        for name in ("val_size", "train_size"):
            if getattr(self, name) < 0:
                raise SchnError(f"split.{name} must be >= 0, got {getattr(self, name)}")
        if self.query_per_class <= 0 or self.query_size <= 0:
            raise SchnError("split.query_per_class and split.query_size must be > 0")
