"""Split protocols: sizes, disjointness, determinism, save/load."""
import json

import numpy as np
import pytest

from schn.data import Split, SplitConfig, list_splits, load_split, make_split
from schn.errors import SchnError


class Items:
    """The part of a HashingDataset that splits read: labels, class_names, groups, len."""

    def __init__(self, per_class=30, classes=4, groups=None, multi=False):
        n = per_class * classes
        self.labels = np.zeros((n, classes), np.uint8)
        self.labels[np.arange(n), np.arange(n) % classes] = 1
        if multi:
            self.labels[::3, 0] = 1
        self.class_names = [f"c{k}" for k in range(classes)]
        self.groups = np.asarray(groups if groups is not None else ["all"] * n)

    def __len__(self):
        return len(self.labels)


def check_disjoint(s: Split, n):
    assert not set(s.query) & set(s.database) and not set(s.train) & set(s.val)
    assert set(s.train) | set(s.val) <= set(s.database)
    for part in (s.query, s.database, s.train, s.val):
        assert part.dtype == np.int64 and (np.diff(part) > 0).all() and (len(part) == 0 or part.max() < n)


def test_protocol_names():
    assert list_splits() == ["cifar10", "cifar10-1", "cifar10-2", "cifar10-adsh", "lists", "mirflickr25k",
                             "mirflickr25k-adsh", "nuswide21", "per_class", "random"]


def test_cifar10_per_class_sizes_and_val():
    items = Items()
    s = make_split(items, SplitConfig(protocol="cifar10-adsh", query_per_class=5, val_size=10), seed=1)
    assert len(s.query) == 20 and len(s.database) == 100 and len(s.val) == 10 and len(s.train) == 90
    assert (items.labels[s.query].sum(0) == 5).all()
    check_disjoint(s, len(items))
    sub = make_split(items, SplitConfig(protocol="per_class", query_per_class=0.1, train_size=40), seed=1)
    assert len(sub.query) == 12 and len(sub.train) == 40 and len(sub.val) == 0
    check_disjoint(sub, len(items))


def test_per_class_multi_label_draws_distinct_items():
    items = Items(multi=True)
    s = make_split(items, SplitConfig(protocol="per_class", query_per_class=5), seed=0)
    assert len(s.query) == 20
    check_disjoint(s, len(items))


def test_random_and_mirflickr():
    items = Items()
    for name in ("random", "mirflickr25k-adsh"):
        s = make_split(items, SplitConfig(protocol=name, query_size=25), seed=3)
        assert len(s.query) == 25 and len(s.database) == 95 and len(s.train) == 95
        check_disjoint(s, len(items))


def test_lists_by_group():
    groups = ["database_img"] * 100 + ["test_img"] * 20
    items = Items(groups=groups)
    s = make_split(items, SplitConfig(protocol="lists", val_size=5), seed=0)
    assert s.query.tolist() == list(range(100, 120)) and s.database.tolist() == list(range(100))
    check_disjoint(s, len(items))
    with pytest.raises(SchnError, match="groups: database_img, test_img"):
        make_split(items, SplitConfig(protocol="lists", query_group="test"), seed=0)


def test_determinism_and_unseeded():
    items = Items()
    cfg = SplitConfig(protocol="random", query_size=10, val_size=7)
    a, b, c = (make_split(items, cfg, seed=s) for s in (4, 4, 5))
    assert all(np.array_equal(getattr(a, p), getattr(b, p)) for p in ("query", "database", "train", "val"))
    assert not np.array_equal(a.query, c.query)
    assert make_split(items, SplitConfig(seed=9, query_per_class=2)).seed == 9  # seed from the config
    free = make_split(items, SplitConfig(protocol="random", query_size=10, seeded=False))
    assert free.seed is None and len(free.query) == 10


def test_too_few_items():
    items = Items(per_class=3)
    with pytest.raises(SchnError, match="too few"):
        make_split(items, SplitConfig(protocol="cifar10-adsh", query_per_class=100), seed=0)
    with pytest.raises(SchnError, match="query_size"):
        make_split(items, SplitConfig(protocol="random", query_size=1000), seed=0)
    with pytest.raises(SchnError, match="val_size"):
        make_split(items, SplitConfig(protocol="random", query_size=2, val_size=10), seed=0)
    with pytest.raises(SchnError, match="train_size"):
        make_split(items, SplitConfig(protocol="random", query_size=2, val_size=2, train_size=9), seed=0)
    with pytest.raises(SchnError, match="split.val_size must be >= 0"):
        make_split(items, SplitConfig(protocol="random", query_size=2, val_size=-1), seed=0)
    with pytest.raises(SchnError, match="unknown split protocol"):
        make_split(items, SplitConfig(protocol="coco"), seed=0)


def test_save_load_round_trip(tmp_path):
    items = Items()
    s = make_split(items, SplitConfig(protocol="cifar10-adsh", query_per_class=3, val_size=4), seed=2)
    path = tmp_path / "run" / "split.json"
    s.save(str(path))
    assert [p.name for p in path.parent.iterdir()] == ["split.json"]  # no temp file left
    back = load_split(str(path), items)
    assert back.protocol == "cifar10-adsh" and back.seed == 2 and back.n_items == 120
    for p in ("query", "database", "train", "val"):
        assert np.array_equal(getattr(back, p), getattr(s, p))
    again = make_split(items, SplitConfig(file=str(path), protocol="random"), seed=99)
    assert np.array_equal(again.query, s.query) and again.protocol == "cifar10-adsh"


def test_bad_split_files(tmp_path):
    items = Items()
    s = make_split(items, SplitConfig(protocol="random", query_size=5), seed=0)
    path = tmp_path / "split.json"
    s.save(str(path))
    with pytest.raises(SchnError, match="drawn for 120 items but the data set has 60"):
        load_split(str(path), Items(per_class=15))
    blob = json.loads(path.read_text())
    blob["query"].append(500)
    path.write_text(json.dumps(blob))
    with pytest.raises(SchnError, match="query indices fall outside"):
        load_split(str(path))
    blob["query"][-1] = blob["database"][0]
    path.write_text(json.dumps(blob))
    with pytest.raises(SchnError, match="query and database overlap"):
        load_split(str(path))
    path.write_text("{not json")
    with pytest.raises(SchnError, match="is not a split file"):
        load_split(str(path))
    path.write_text(json.dumps({"query": [1]}))
    with pytest.raises(SchnError, match="is not a split file"):
        load_split(str(path))
    with pytest.raises(SchnError, match="cannot read split file"):
        load_split(str(tmp_path / "missing.json"))
