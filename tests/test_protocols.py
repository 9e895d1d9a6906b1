"""The field's split protocols by name (DeepHash-pytorch, CISiPLab FIRe, HashNet's lists), on small
data sets written here in the real layouts, with the published counts scaled down by config fields."""
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from schn.config import load_config
from schn.data import DataConfig, SplitConfig, create_dataset, load_split, make_split
from schn.errors import SchnError

CONFIGS = Path(__file__).parents[1] / "configs"
CLASSES = ("airplane", "bird", "cat")


def image(path: Path, value: int = 0) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (value % 256, 40, 90)).save(path)


def sets(s):
    return {p: set(getattr(s, p).tolist()) for p in ("query", "database", "train", "val")}


def one_line_error(match: str, fn, *args, **kwargs) -> str:
    with pytest.raises(SchnError, match=match) as info:
        fn(*args, **kwargs)
    text = str(info.value)
    assert "\n" not in text and text.strip() == text and len(text) < 400
    return text


# ---- CIFAR-10 -----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def cifar_root(tmp_path_factory):
    """CIFAR-10 (JPEG) layout: train/<class>/ (12 per class) and test/<class>/ (4 per class)."""
    root = tmp_path_factory.mktemp("cifar")
    for group, n in (("train", 12), ("test", 4)):
        for k, name in enumerate(CLASSES):
            for i in range(n):
                image(root / group / name / f"{i:04d}.png", 20 * k + i)
    return root


@pytest.fixture(scope="module")
def cifar(cifar_root):
    return create_dataset(DataConfig(name="image_folder", root=str(cifar_root), subdirs=["train", "test"]))


def per_class(ds, idx):
    return ds.labels[np.asarray(idx, dtype=np.int64)].sum(axis=0).tolist()


def test_cifar10_deephash_trains_outside_the_database(cifar):
    cfg = SplitConfig(protocol="cifar10", query_per_class=2, train_per_class=5)
    s = make_split(cifar, cfg, seed=0)
    p = sets(s)
    assert len(s.query) == 6 and len(s.train) == 15 and len(s.database) == 48 - 6 - 15 and len(s.val) == 0
    assert per_class(cifar, s.query) == [2, 2, 2] and per_class(cifar, s.train) == [5, 5, 5]
    assert not p["train"] & p["database"] and not p["query"] & (p["database"] | p["train"])
    assert p["query"] | p["database"] | p["train"] == set(range(48))  # queries from train and test
    # val: database items outside training; the published training size is kept
    v = make_split(cifar, SplitConfig(protocol="cifar10", query_per_class=2, train_per_class=5, val_size=4), seed=0)
    assert len(v.val) == 4 and len(v.train) == 15 and set(v.val.tolist()) <= set(v.database.tolist())
    assert not set(v.val.tolist()) & set(v.train.tolist())
    # unset train_per_class: DeepHash-pytorch's 500 per class, too many here
    one_line_error(r"class 'airplane' has \d+ items left, too few for 500 training items per class",
                   make_split, cifar, SplitConfig(protocol="cifar10", query_per_class=2), seed=0)


def test_cifar10_1_trains_inside_the_database(cifar):
    s = make_split(cifar, SplitConfig(protocol="cifar10-1", query_per_class=2, train_per_class=5, val_size=3), seed=1)
    p = sets(s)
    assert len(s.query) == 6 and len(s.database) == 42 and len(s.train) == 15 and len(s.val) == 3
    assert per_class(cifar, s.train) == [5, 5, 5] and per_class(cifar, s.query) == [2, 2, 2]
    assert p["train"] <= p["database"] and p["val"] <= p["database"] - p["train"]
    # val larger than the database outside training: carved from training instead
    big = make_split(cifar, SplitConfig(protocol="cifar10-1", query_per_class=2, train_per_class=12,
                                        val_size=8), seed=1)
    assert len(big.val) == 8 and len(big.train) == 36 - 8 and not set(big.val.tolist()) & set(big.train.tolist())


def test_cifar10_2_test_group_queries_train_group_database(cifar, cifar_root):
    s = make_split(cifar, SplitConfig(protocol="cifar10-2", val_size=2), seed=0)
    assert {cifar.groups[i] for i in s.query} == {"test"} and len(s.query) == 12
    assert {cifar.groups[i] for i in s.database} == {"train"} and len(s.database) == 36
    assert len(s.train) == 34 and set(s.train.tolist()) | set(s.val.tolist()) == set(s.database.tolist())
    flat = create_dataset(DataConfig(name="image_folder", root=str(cifar_root / "train")))
    one_line_error(r"cifar10-2 needs groups train and test .*groups here: ", make_split, flat,
                   SplitConfig(protocol="cifar10-2"), seed=0)


def test_cifar10_adsh_is_todays_protocol(cifar):
    s = make_split(cifar, SplitConfig(protocol="cifar10-adsh", query_per_class=2, val_size=4), seed=0)
    assert len(s.query) == 6 and len(s.database) == 42 and len(s.train) == 38 and len(s.val) == 4
    assert set(s.train.tolist()) | set(s.val.tolist()) == set(s.database.tolist())


@pytest.mark.parametrize("protocol", ["cifar10", "cifar10-1", "cifar10-2", "cifar10-adsh"])
def test_cifar_determinism_and_reload(cifar, protocol, tmp_path):
    cfg = SplitConfig(protocol=protocol, query_per_class=2, train_per_class=5, val_size=2)
    a, b, c = (make_split(cifar, cfg, seed=s) for s in (3, 3, 4))
    for part in ("query", "database", "train", "val"):
        assert np.array_equal(getattr(a, part), getattr(b, part))
    if protocol != "cifar10-2":  # its query and database are fixed by the groups
        assert not np.array_equal(a.query, c.query)
    assert not np.array_equal(a.val, c.val)
    a.save(str(tmp_path / "split.json"))
    back = load_split(str(tmp_path / "split.json"), cifar)
    assert back.protocol == protocol and all(np.array_equal(getattr(back, p), getattr(a, p))
                                             for p in ("query", "database", "train", "val"))


def test_cifar_too_few_items(cifar):
    one_line_error(r"class 'airplane' has 16 items left, too few for 16 queries per class",
                   make_split, cifar, SplitConfig(protocol="cifar10-1", query_per_class=16), seed=0)
    # cifar10 keeps a database item per class
    one_line_error(r"too few for 14 training items per class with a non-empty database",
                   make_split, cifar, SplitConfig(protocol="cifar10", query_per_class=2, train_per_class=14), seed=0)
    one_line_error(r"split.train_per_class >= 1", make_split, cifar,
                   SplitConfig(protocol="cifar10", query_per_class=2, train_per_class=0), seed=0)
    one_line_error(r"split.val_size=40 leaves no training items", make_split, cifar,
                   SplitConfig(protocol="cifar10", query_per_class=2, train_per_class=5, val_size=40), seed=0)


# ---- NUS-WIDE-21 layout --------------------------------------------------------------------
def write_nuswide(root: Path, n_db=60, n_test=12, k=4, seed=0) -> np.ndarray:
    """database_img.txt + database_label_onehot.txt, test_img.txt + test_label_onehot.txt: 0/1
    rows, 1-3 concepts per image."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((n_db + n_test, k), np.uint8)
    for i in range(len(labels)):
        labels[i, rng.choice(k, rng.integers(1, 4), replace=False)] = 1
    for stem, rows in (("database", labels[:n_db]), ("test", labels[n_db:])):
        paths = [f"images/{stem}_{i:04d}.jpg" for i in range(len(rows))]
        for i, p in enumerate(paths):
            image(root / p, i)
        (root / f"{stem}_img.txt").write_text("\n".join(paths) + "\n")
        (root / f"{stem}_label_onehot.txt").write_text("\n".join(" ".join(map(str, r)) for r in rows) + "\n")
    return labels


def test_nuswide21_per_concept_queries_and_training(tmp_path):
    write_nuswide(tmp_path)
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    assert len(ds) == 72 and ds.multi_label
    cfg = SplitConfig(protocol="nuswide21", query_per_class=3, train_per_class=6, val_size=5)
    s = make_split(ds, cfg, seed=0)
    p = sets(s)
    # distinct items: 3 queries and 6 training images drawn for each of the 4 concepts
    assert len(s.query) == 12 and len(s.train) == 24 and len(s.database) == 60 and len(s.val) == 5
    assert all(n >= 3 for n in per_class(ds, s.query)) and all(n >= 6 for n in per_class(ds, s.train))
    assert p["train"] <= p["database"] and p["val"] <= p["database"] - p["train"]
    assert not p["query"] & p["database"]
    # queries drawn from both lists (the draw ignores the release's own test list)
    assert {ds.groups[i] for i in range(len(ds))} == {"database_img", "test_img"}
    again = make_split(ds, cfg, seed=0)
    assert np.array_equal(again.query, s.query) and np.array_equal(again.train, s.train)
    other = make_split(ds, cfg, seed=1)
    assert not np.array_equal(other.query, s.query)
    one_line_error(r"too few for 40 training items per class; lower split.train_per_class", make_split, ds,
                   SplitConfig(protocol="nuswide21", query_per_class=3, train_per_class=40), seed=0)


def test_nuswide21_adsh_config_uses_the_release_lists(tmp_path):
    write_nuswide(tmp_path)
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    cfg = load_config(CONFIGS / "nuswide21-adsh.yaml", ["split.val_size=5"])
    s = make_split(ds, cfg.split, seed=0)
    assert {ds.groups[i] for i in s.query} == {"test_img"} and len(s.query) == 12
    assert len(s.database) == 60 and len(s.train) == 55


# ---- MIRFlickr-25K as FIRe ----------------------------------------------------------------
def test_mirflickr25k_fire_and_adsh(tmp_path):
    write_nuswide(tmp_path, n_db=50, n_test=10)
    (tmp_path / "database_img.txt").rename(tmp_path / "db_image.txt")
    (tmp_path / "database_label_onehot.txt").rename(tmp_path / "database_label.txt")
    (tmp_path / "test_img.txt").rename(tmp_path / "test_image_m.txt")
    (tmp_path / "test_label_onehot.txt").rename(tmp_path / "test_label.txt")
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    s = make_split(ds, SplitConfig(protocol="mirflickr25k", query_size=10, train_size=20, val_size=5), seed=0)
    p = sets(s)
    assert len(s.query) == 10 and len(s.database) == 50 and len(s.train) == 20 and len(s.val) == 5
    assert p["train"] <= p["database"] and p["val"] <= p["database"] and not p["train"] & p["val"]
    # train_size 0: FIRe's 4,000, more than this data set has
    one_line_error(r"split.train_size=4000 exceeds the 50 database items left after val; lower it "
                   r"\(mirflickr25k-adsh trains on the whole database\)",
                   make_split, ds, SplitConfig(protocol="mirflickr25k", query_size=10), seed=0)
    assert SplitConfig().train_size == 0 and SplitConfig().protocol == "per_class"  # dumps as before
    adsh = make_split(ds, SplitConfig(protocol="mirflickr25k-adsh", query_size=10, val_size=5), seed=0)
    assert len(adsh.train) == 45
    fire = load_config(CONFIGS / "mirflickr25k.yaml")
    assert fire.split.protocol == "mirflickr25k" and fire.split.train_size == 4000 and fire.eval.map_depth == 1000


# ---- HashNet's list files (ImageNet-100, MS-COCO) -------------------------------------------
def write_hashnet(root: Path, k=3, db_per_class=6, test_per_class=2, train_per_class=2, outside=1):
    """database.txt, test.txt, train.txt: "path l0 ... lK-1" (one-hot); train.txt repeats
    ``train_per_class`` database lines per class and adds ``outside`` images of its own."""
    def line(path, c):
        return path + " " + " ".join("1" if j == c else "0" for j in range(k))
    lists = {"database": [], "test": [], "train": []}
    for c in range(k):
        for i in range(db_per_class):
            lists["database"].append(line(f"train/n{c:03d}/db_{i}.JPEG", c))
        for i in range(test_per_class):
            lists["test"].append(line(f"val/n{c:03d}/q_{i}.JPEG", c))
        lists["train"] += lists["database"][c * db_per_class: c * db_per_class + train_per_class]
        lists["train"] += [line(f"extra/n{c:03d}/t_{i}.JPEG", c) for i in range(outside)]
    for name, lines in lists.items():
        for j, entry in enumerate(lines):
            image(root / entry.split()[0], j)
        (root / f"{name}.txt").write_text("\n".join(lines) + "\n")
    return lists


def lists_cfg(**kw):
    return SplitConfig(protocol="lists", query_group="test", database_group="database", train_group="train", **kw)


def test_hashnet_lists_with_repeated_train_lines(tmp_path):
    write_hashnet(tmp_path)
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))  # auto-detected
    assert len(ds) == 18 + 6 + 9 and sorted(set(ds.groups)) == ["database", "test", "train"]
    assert ds.labels.shape == (33, 3) and ds.ids[0] == "train/n000/db_0.JPEG"
    s = make_split(ds, lists_cfg(), seed=0)
    p = sets(s)
    assert s.query.tolist() == list(range(18, 24)) and s.database.tolist() == list(range(18))
    assert len(s.train) == 9
    ids = [ds.ids[i] for i in s.train]
    repeated = [i for i in s.train if ds.groups[i] == "database"]
    assert len(repeated) == 6 and all(ds.ids[i].startswith("train/") for i in repeated)
    assert sum(i.startswith("extra/") for i in ids) == 3 and len(set(ids)) == 9
    # the repeated lines' own items belong to no part
    train_group = [i for i in range(len(ds)) if ds.groups[i] == "train"]
    unused = set(range(len(ds))) - set().union(*p.values())
    assert unused == {i for i in train_group if not ds.ids[i].startswith("extra/")} and len(unused) == 6
    assert per_class(ds, s.train) == [3, 3, 3]
    # val from database items outside train.txt
    v = make_split(ds, lists_cfg(val_size=4), seed=0)
    assert len(v.val) == 4 and len(v.train) == 9 and set(v.val.tolist()) <= p["database"] - p["train"]
    # database_group "": every item neither a query nor of the training list
    rest = make_split(ds, SplitConfig(protocol="lists", query_group="test", database_group="", train_group="train"), seed=0)
    assert rest.database.tolist() == list(range(18)) and np.array_equal(rest.train, s.train)
    # determinism
    a, b = make_split(ds, lists_cfg(val_size=4), seed=5), make_split(ds, lists_cfg(val_size=4), seed=5)
    assert np.array_equal(a.val, b.val) and np.array_equal(a.train, b.train)


def test_hashnet_config_loads_the_lists(tmp_path):
    write_hashnet(tmp_path)
    for name, depth in (("imagenet100.yaml", 1000), ("coco.yaml", 5000)):
        cfg = load_config(CONFIGS / name, [f"data.root={tmp_path}", "split.val_size=2"])
        assert cfg.eval.map_depth == depth
        ds = create_dataset(cfg.data)
        s = make_split(ds, cfg.split)
        assert len(s.query) == 6 and len(s.database) == 18 and len(s.train) == 9 and len(s.val) == 2


def test_hashnet_lists_bad_input(tmp_path):
    lists = write_hashnet(tmp_path)
    ds = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    one_line_error(r"split.train_group='trainval' is not a group of this data set; groups: database, test, train",
                   make_split, ds, SplitConfig(protocol="lists", query_group="test", database_group="database",
                                               train_group="trainval"), seed=0)
    one_line_error(r"split.query_group='test_img' is not a group", make_split, ds,
                   SplitConfig(protocol="lists", database_group="database"), seed=0)
    # a path listed twice in train.txt trains once
    (tmp_path / "train.txt").write_text("\n".join(lists["train"] + lists["train"][2:3] + lists["train"][:1]) + "\n")
    twice = make_split(create_dataset(DataConfig(name="image_list", root=str(tmp_path))), lists_cfg(), seed=0)
    assert len(twice.train) == 9
    # a training line repeating a query's path
    (tmp_path / "train.txt").write_text("\n".join(lists["train"] + [lists["test"][0]]) + "\n")
    bad = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    one_line_error(r"training item val/n000/q_0.JPEG of group 'train' is also a query", make_split, bad,
                   lists_cfg(), seed=0)
    # a repeated database path with other labels
    path = lists["database"][0].split()[0]
    (tmp_path / "train.txt").write_text("\n".join(lists["train"] + [path + " 0 1 0"]) + "\n")
    bad = create_dataset(DataConfig(name="image_list", root=str(tmp_path)))
    one_line_error(r"train/n000/db_0.JPEG has other labels in group 'train' than in the database",
                   make_split, bad, lists_cfg(), seed=0)
    # a list line without labels, and a missing list
    (tmp_path / "train.txt").write_text("\n".join(lists["train"] + ["extra/n000/t_0.JPEG 0 1"]) + "\n")
    one_line_error(r"train.txt line 10: 2 label columns, expected 3", create_dataset,
                   DataConfig(name="image_list", root=str(tmp_path)))
    (tmp_path / "train.txt").write_text("\n".join(lists["train"][:3] + ["   ", *lists["train"][3:]]) + "\n")
    one_line_error(r"train.txt line 4 is blank", create_dataset, DataConfig(name="image_list", root=str(tmp_path)))
    one_line_error(r"cannot read list file .*missing.txt", create_dataset,
                   DataConfig(name="image_list", root=str(tmp_path), lists=[["missing.txt"]]))
    one_line_error(r"must be \[image_list_file, label_file\] or \[list_file\]", create_dataset,
                   DataConfig(name="image_list", root=str(tmp_path), lists=[["a", "b", "c"]]))


# ---- the shipped configs ------------------------------------------------------------------
@pytest.mark.parametrize("name, protocol, depth", [
    ("cifar10-deephash.yaml", "cifar10", 54000), ("cifar10-1.yaml", "cifar10-1", None),
    ("cifar10-2.yaml", "cifar10-2", 50000), ("cifar10-jpg-efficientnet-frozen.yaml", "cifar10-adsh", None),
    ("cifar10.yaml", "cifar10-adsh", None), ("nuswide21.yaml", "nuswide21", 5000),
    ("nuswide21-adsh.yaml", "lists", 5000), ("mirflickr25k.yaml", "mirflickr25k", 1000),
    ("mirflickr25k-adsh.yaml", "mirflickr25k-adsh", 5000), ("imagenet100.yaml", "lists", 1000),
    ("coco.yaml", "lists", 5000)])
def test_shipped_protocol_configs(name, protocol, depth):
    cfg = load_config(CONFIGS / name)
    assert cfg.split.protocol == protocol and cfg.eval.map_depth == depth
    header = (CONFIGS / name).read_text().splitlines()[0]
    assert header.startswith("#")
