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

# protocol(dataset, cfg, rng) -> (query, database) global index arrays
SPLITS: Registry[Callable] = Registry("split protocol")
_PARTS = ("query", "database", "train", "val")


@dataclass
class Split:
    query: np.ndarray
    database: np.ndarray
    train: np.ndarray  # training pool, a subset of database
    val: np.ndarray  # model-selection items, a subset of database disjoint from train
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
    db = set(split.database.tolist())
    if db & set(split.query.tolist()):
        raise SchnError(f"{where}: query and database overlap")
    if set(split.train.tolist()) & set(split.val.tolist()):
        raise SchnError(f"{where}: train and val overlap")
    if not db.issuperset(split.train.tolist()) or not db.issuperset(split.val.tolist()):
        raise SchnError(f"{where}: train and val must be inside the database")
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
    query, database = protocol(dataset, cfg, rng)
    if cfg.val_size >= len(database):
        raise SchnError(f"split.val_size={cfg.val_size} leaves no training items in a "
                        f"database of {len(database)}; lower it")
    shuffled = rng.permutation(database)
    val, rest = shuffled[: cfg.val_size], shuffled[cfg.val_size:]
    if cfg.train_size > len(rest):
        raise SchnError(f"split.train_size={cfg.train_size} exceeds the {len(rest)} database items "
                        "left after val; lower it (0 = all)")
    train = rest[: cfg.train_size] if cfg.train_size else rest
    split = Split(*(np.sort(np.asarray(a, dtype=np.int64)) for a in (query, database, train, val)),
                  protocol=cfg.protocol, seed=seed, n_items=len(dataset))
    return _check(split, f"split protocol {cfg.protocol}")


def list_splits() -> list[str]:
    return SPLITS.names()


def _rest(n: int, query: np.ndarray) -> np.ndarray:
    mask = np.ones(n, dtype=bool)
    mask[query] = False
    return np.flatnonzero(mask)


@SPLITS.register("per_class")
@SPLITS.register("cifar10")
def per_class(dataset, cfg: SplitConfig, rng):
    """query_per_class items of each class (an int, or a fraction < 1); the rest is the database.

    For multi-label data each class draws from items not drawn yet, as NUS-WIDE's 100 per concept.
    """
    taken = np.zeros(len(dataset), dtype=bool)
    for k, name in enumerate(dataset.class_names):
        pool = np.flatnonzero((dataset.labels[:, k] > 0) & ~taken)
        want = cfg.query_per_class
        n = int(round(want * pool.size)) if 0 < want < 1 else int(want)
        if n <= 0 or n >= pool.size:
            raise SchnError(f"class {name!r} has {pool.size} items, too few for {want} queries per "
                            "class with a non-empty database; lower split.query_per_class")
        taken[rng.choice(pool, n, replace=False)] = True
    query = np.flatnonzero(taken)
    return query, _rest(len(dataset), query)


@SPLITS.register("random")
@SPLITS.register("mirflickr25k")
def random_queries(dataset, cfg: SplitConfig, rng):
    """query_size random items; the rest is the database."""
    if not 0 < cfg.query_size < len(dataset):
        raise SchnError(f"split.query_size={cfg.query_size} needs more than that many items; the data set "
                        f"has {len(dataset)}")
    query = rng.choice(len(dataset), cfg.query_size, replace=False)
    return query, _rest(len(dataset), query)


@SPLITS.register("nuswide21")
def by_group(dataset, cfg: SplitConfig, rng):
    """Queries = items of group query_group; database = group database_group (or all others)."""
    present = sorted(set(dataset.groups.tolist()))
    for field, group in (("query_group", cfg.query_group), ("database_group", cfg.database_group)):
        if group and group not in present:
            raise SchnError(f"split.{field}={group!r} is not a group of this data set; groups: "
                            f"{', '.join(present)}")
    query = np.flatnonzero(dataset.groups == cfg.query_group)
    if cfg.database_group:
        database = np.flatnonzero(dataset.groups == cfg.database_group)
    else:
        database = _rest(len(dataset), query)
    return query, database
