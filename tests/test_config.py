import pytest
import yaml

from schn.config import config_from_dict, dump_config, load_config
from schn.errors import SchnError


def test_defaults_and_overrides_are_typed(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("train:\n  bits: 16\nmethod:\n  name: schn\n  alpha: 3\n")
    cfg = load_config(path, ["train.bits=48", "method.variant=tomm", "eval.map_depth=5000",
                             "train.cover_all=false", "data.subdirs=[train, test]"])
    assert cfg.train.bits == 48 and isinstance(cfg.train.bits, int)
    assert cfg.method.alpha == 3.0 and isinstance(cfg.method.alpha, float)
    assert cfg.method.variant == "tomm" and cfg.eval.map_depth == 5000
    assert cfg.train.cover_all is False and cfg.data.subdirs == ["train", "test"]


def test_resolved_config_round_trips():
    cfg = load_config(None, ["train.bits=24", "method.beta=0.5"])
    again = config_from_dict(yaml.safe_load(dump_config(cfg)))
    assert again == cfg


@pytest.mark.parametrize("override, message", [
    (["train.bitz=3"], "unknown config key train.bitz; did you mean train.bits"),
    (["trian.bits=3"], "section must be one of|--set key must be"),
    (["train.bits=abc"], "train.bits must be an integer"),
    (["train.bits=2.5"], "train.bits must be an integer"),
    (["train.cover_all=maybe"], "must be true or false"),
    (["train.bits"], "expects key=value"),
    (["method.name=nope"], "unknown method 'nope'"),
    (["train.select=best_on_test"], "train.select must be"),
])
def test_bad_keys_and_values_are_one_line_errors(override, message):
    with pytest.raises(SchnError, match=message) as info:
        load_config(None, override)
    assert "\n" not in str(info.value)


def test_bad_files(tmp_path):
    with pytest.raises(SchnError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [1, 2\n")
    with pytest.raises(SchnError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("trainn:\n  bits: 3\n")
    with pytest.raises(SchnError, match="did you mean train"):
        load_config(bad)


def test_every_shipped_config_loads():
    from pathlib import Path

    configs = sorted((Path(__file__).parents[1] / "configs").glob("*.yaml"))
    assert configs
    for path in configs:
        load_config(path)
