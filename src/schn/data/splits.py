"""Query / database / train / val splits, drawn by named protocols, saved and reloaded as JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

from ..errors import SchnError
from ..fileio import write_text
from ..registry import Registry
from .config import SplitConfig

# protocol(dataset, cfg, rng) -> (query, database) or (query, database, train) global index
# arrays; a third array fixes the training set (inside the database, or outside it)
SPLITS: Registry[Callable] = Registry("split protocol")
_PARTS = ("query", "database", "train", "val")


@dataclass
class Split:
    query: np.ndarray
    database: np.ndarray
    train: np.ndarray  # training pool: a subset of database, or (cifar10, lists) items outside it
    val: np.ndarray  # model-selection items from database or train, disjoint from train
    protocol: str
    seed: Optional[int]  # None: drawn from OS entropy
    n_items: int = 0  # size of the data set it indexes

    def save(self, path: str) -> None:
        """Write JSON atomically: a temp file in the same folder, then a rename."""
        blob = {"protocol": self.protocol, "seed": self.seed, "n_items": self.n_items}
        blob.update({part: getattr(self, part).tolist() for part in _PARTS})
        write_text(path, json.dumps(blob))

    def __repr__(self) -> str:
        sizes = ", ".join(f"{p}={len(getattr(self, p))}" for p in _PARTS)
        return f"Split({self.protocol}, seed={self.seed}, {sizes})"


def _check(split: Split, where: str) -> Split:
    for part in _PARTS:
        idx = getattr(split, part)
        if len(idx) and (idx.min() < 0 or idx.max() >= split.n_items):
            raise SchnError(f"{where}: {part} indices fall outside 0..{split.n_items - 1}")
        if len(np.unique(idx)) != len(idx):
            raise SchnError(f"{where}: {part} holds repeated indices")
    query, train, val = (set(getattr(split, p).tolist()) for p in ("query", "train", "val"))
    if query & set(split.database.tolist()):
        raise SchnError(f"{where}: query and database overlap")
    if query & train or query & val:
        raise SchnError(f"{where}: train and val must be disjoint from the queries")
    if train & val:
        raise SchnError(f"{where}: train and val overlap")
    return split


def load_split(path: str, dataset=None) -> Split:
    """Reload a saved split; with ``dataset``, check it indexes a data set of that size."""
    try:
        with open(path) as f:
            blob = json.load(f)
        parts = {p: np.asarray(blob[p], dtype=np.int64).reshape(-1) for p in _PARTS}
        split = Split(**parts, protocol=str(blob["protocol"]), seed=blob.get("seed"),
                      n_items=int(blob["n_items"]))
    except OSError as e:
        raise SchnError(f"cannot read split file {path}: {e.strerror}; fix split.file") from None
    except (ValueError, KeyError, TypeError) as e:
        raise SchnError(f"{path} is not a split file ({type(e).__name__}: {e}); fix split.file") from None
    if dataset is not None and split.n_items != len(dataset):
        raise SchnError(f"split {path} was drawn for {split.n_items} items but the data set has "
                        f"{len(dataset)}; draw a new split (unset split.file)")
    return _check(split, path)


def make_split(dataset, cfg: SplitConfig, seed: Optional[int] = None) -> Split:
    """Draw (or reload, when ``cfg.file`` is set) a split; ``seed`` overrides ``cfg.seed``."""
    if cfg.file:
        return load_split(cfg.file, dataset)
    protocol = SPLITS.get(cfg.protocol)
    seed = (cfg.seed if seed is None else int(seed)) if cfg.seeded else None
    rng = np.random.default_rng(seed)  # seed None = OS entropy, as the authors' code
    cfg.check()
    drawn = protocol(dataset, cfg, rng)
    query, database = drawn[0], drawn[1]
    fixed = drawn[2] if len(drawn) > 2 else None
    train_size = _train_size(cfg)
    if fixed is None:  # the database trains: val at random from it, the rest trains
        if cfg.val_size >= len(database):
            raise SchnError(f"split.val_size={cfg.val_size} leaves no training items in a "
                            f"database of {len(database)}; lower it")
        shuffled = rng.permutation(database)
        val, rest = shuffled[: cfg.val_size], shuffled[cfg.val_size:]
        left = "database items left after val"
    else:
        val, rest = _carve_val(np.asarray(fixed, dtype=np.int64), np.asarray(database, np.int64), cfg, rng)
        left = "training items left after val"
    if train_size > len(rest):
        hint = ("mirflickr25k-adsh trains on the whole database" if cfg.protocol in _DEFAULT_TRAIN_SIZE
                else "0 = all")
        raise SchnError(f"split.train_size={train_size} exceeds the {len(rest)} {left}; lower it ({hint})")
    if train_size and fixed is not None:
        rest = rng.permutation(rest)
    train = rest[:train_size] if train_size else rest
    split = Split(*(np.sort(np.asarray(a, dtype=np.int64)) for a in (query, database, train, val)),
                  protocol=cfg.protocol, seed=seed, n_items=len(dataset))
    return _check(split, f"split protocol {cfg.protocol}")


def _train_size(cfg: SplitConfig) -> int:
    if cfg.train_size:
        return int(cfg.train_size)
    return _DEFAULT_TRAIN_SIZE.get(cfg.protocol, 0)


def _carve_val(train: np.ndarray, database: np.ndarray, cfg: SplitConfig, rng):
    """val_size items for model selection when the protocol fixes the training set: from the
    database items outside training when there are enough, else from training (removed from it)."""
    if not cfg.val_size:
        return np.zeros(0, np.int64), train
    outside = np.setdiff1d(database, train)
    if len(outside) >= cfg.val_size:
        return rng.choice(outside, cfg.val_size, replace=False), train
    if cfg.val_size >= len(train):
        raise SchnError(f"split.val_size={cfg.val_size} leaves no training items: {len(outside)} "
                        f"database items lie outside the {len(train)} training items; lower it")
    shuffled = rng.permutation(train)
    return shuffled[: cfg.val_size], shuffled[cfg.val_size:]


def list_splits() -> list[str]:
    return SPLITS.names()


def _rest(n: int, query: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[query] = False
    return np.flatnonzero(mask)


_DEFAULT_TRAIN_SIZE = {"mirflickr25k": 4000}  # train_size 0: FIRe's 4,000 training images
_DEFAULT_TRAIN_PER_CLASS = {"cifar10": 500, "cifar10-1": 500, "nuswide21": 500}


def _count(want: float, available: int) -> int:
    return int(round(want * available)) if 0 < want < 1 else int(want)


def _draw_per_class(dataset, want: float, taken: np.ndarray, rng, what: str, field: str,
                    keep_one: bool) -> np.ndarray:
    """``want`` items of each class among those not ``taken`` yet (distinct items, so that a
    multi-label item is drawn once, as NUS-WIDE's 100 per concept); marks them taken."""
    drawn = np.zeros(len(dataset), dtype=bool)
    for k, name in enumerate(dataset.class_names):
        pool = np.flatnonzero((dataset.labels[:, k] > 0) & ~taken & ~drawn)
        n = _count(want, pool.size)
        if n <= 0 or n > pool.size or (keep_one and n == pool.size):
            rest = " with a non-empty database" if keep_one else ""
            raise SchnError(f"class {name!r} has {pool.size} items left, too few for {_number(want)} "
                            f"{what} per class{rest}; lower split.{field} or use a larger data set")
        drawn[rng.choice(pool, n, replace=False)] = True
    taken |= drawn
    return np.flatnonzero(drawn)


def _number(v: float) -> str:
    return str(int(v)) if float(v) == int(v) else f"{v:g}"


def _train_per_class(cfg: SplitConfig) -> int:
    if cfg.train_per_class is not None:
        return int(cfg.train_per_class)
    return _DEFAULT_TRAIN_PER_CLASS.get(cfg.protocol, 0)


@SPLITS.register("per_class")
@SPLITS.register("cifar10-adsh")
@SPLITS.register("cifar10-1")
@SPLITS.register("nuswide21")
def per_class(dataset, cfg: SplitConfig, rng):
    """query_per_class items of each class (an int, or a fraction < 1); the rest is the database.
    With train_per_class (cifar10-1, nuswide21: 500), that many items of each class of the
    database train; without (per_class, cifar10-adsh), the whole database is the training pool.

    For multi-label data each class draws from items not drawn yet, as NUS-WIDE's 100 per concept.
    """
    taken = np.zeros(len(dataset), dtype=bool)
    query = _draw_per_class(dataset, cfg.query_per_class, taken, rng, "queries", "query_per_class",
                            keep_one=True)
    database = _rest(len(dataset), query)
    per = _train_per_class(cfg)
    if not per:
        return query, database
    train = _draw_per_class(dataset, per, taken, rng, "training items", "train_per_class", keep_one=False)
    return query, database, train


@SPLITS.register("cifar10")
def cifar10_deephash(dataset, cfg: SplitConfig, rng):
    """DeepHash-pytorch's CIFAR-10: query_per_class (100) queries and train_per_class (500)
    training items per class; the other items (54,000) are the database, disjoint from training."""
    per = _train_per_class(cfg)
    if per <= 0:
        raise SchnError("split protocol cifar10 trains on items outside the database: set "
                        "split.train_per_class >= 1 (or unset it: 500)")
    taken = np.zeros(len(dataset), dtype=bool)
    query = _draw_per_class(dataset, cfg.query_per_class, taken, rng, "queries", "query_per_class",
                            keep_one=True)
    train = _draw_per_class(dataset, per, taken, rng, "training items", "train_per_class", keep_one=True)
    return query, np.flatnonzero(~taken), train


def _groups_present(dataset) -> list[str]:
    return sorted(set(np.asarray(dataset.groups).tolist()))


def _group(dataset, name: str, field: str) -> np.ndarray:
    present = _groups_present(dataset)
    if name not in present:
        raise SchnError(f"{field}={name!r} is not a group of this data set; groups: {', '.join(present)}")
    return np.flatnonzero(np.asarray(dataset.groups) == name)


@SPLITS.register("cifar10-2")
def cifar10_test_train(dataset, cfg: SplitConfig, rng):
    """DeepHash-pytorch's cifar10-2: queries = group ``test`` (CIFAR-10's 10,000 test images),
    database = training pool = group ``train`` (50,000). Needs a reader that keeps the groups
    (cifar10_python, or image_folder with data.subdirs [train, test])."""
    where = "split protocol cifar10-2 needs groups train and test (image_folder: set data.subdirs=[train,test]);"
    present = _groups_present(dataset)
    if "test" not in present or "train" not in present:
        raise SchnError(f"{where} groups here: {', '.join(present)}")
    return _group(dataset, "test", "group"), _group(dataset, "train", "group")


@SPLITS.register("random")
@SPLITS.register("mirflickr25k-adsh")
@SPLITS.register("mirflickr25k")
def random_queries(dataset, cfg: SplitConfig, rng):
    """query_size random items; the rest is the database. mirflickr25k (FIRe): train_size
    (4,000) of the database train; random, mirflickr25k-adsh: the whole database."""
    if not 0 < cfg.query_size < len(dataset):
        raise SchnError(f"split.query_size={cfg.query_size} needs more than that many items; the data set "
                        f"has {len(dataset)}")
    query = rng.choice(len(dataset), cfg.query_size, replace=False)
    return query, _rest(len(dataset), query)


@SPLITS.register("lists")
def by_group(dataset, cfg: SplitConfig, rng):
    """Queries = items of group query_group; database = group database_group (or all others);
    training = group train_group (or the database). A training item with the path of a database
    item is that database item (HashNet's train.txt repeats database.txt lines): one item, both
    roles; the repeated line's own item belongs to no part."""
    query = _group(dataset, cfg.query_group, "split.query_group")
    listed = _group(dataset, cfg.train_group, "split.train_group") if cfg.train_group else None
    if cfg.database_group:
        database = _group(dataset, cfg.database_group, "split.database_group")
    else:  # every item neither a query nor of the training list
        database = _rest(len(dataset), query if listed is None else np.concatenate([query, listed]))
    if listed is None:
        return query, database
    if cfg.train_group == cfg.database_group:
        return query, database, database
    ids = [str(i) for i in dataset.ids]
    db_by_id = {}
    for i in database.tolist():
        db_by_id.setdefault(ids[i], i)
    query_ids = {ids[i] for i in query.tolist()}
    train = {}  # path -> item: a path listed twice trains once
    for i in listed.tolist():
        if ids[i] in query_ids:
            raise SchnError(f"training item {ids[i]} of group {cfg.train_group!r} is also a query; "
                            "fix the list files (queries must stay unseen)")
        j = db_by_id.get(ids[i], i)
        if j != i and not np.array_equal(dataset.labels[i], dataset.labels[j]):
            raise SchnError(f"{ids[i]} has other labels in group {cfg.train_group!r} than in the "
                            "database; fix the list files")
        train.setdefault(ids[i], j)
    return query, database, np.unique(np.fromiter(train.values(), dtype=np.int64, count=len(train)))
