"""Config files (_base_ inheritance, _delete_, --set overrides, errors, dump) and the Registry builder."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from pointwin.config import Config, ConfigError, apply_overrides, config_from_dict, load_config, merge
from pointwin.registry import Registry


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    write(tmp_path / "_base_" / "model.yaml", """
model:
  backbone: {type: FlatFormer, channels: 64, depths: [2, 2]}
  head: {type: CenterHead, tasks: [car, ped]}
train: {epochs: 10, lr: 0.001, amp: true}
""")
    write(tmp_path / "_base_" / "schedule.yaml", """
train: {epochs: 20, warmup: 0.1}
model:
  backbone: {depths: [4]}
""")
    return write(tmp_path / "exp" / "child.yaml", """
_base_: [../_base_/model.yaml, ../_base_/schedule.yaml]
model:
  backbone: {channels: 128}
name: child
""")


def test_bases_are_deep_merged_left_to_right(tree: Path):
    cfg = load_config(tree)
    assert cfg == {
        "model": {"backbone": {"type": "FlatFormer", "channels": 128, "depths": [4]},  # lists are replaced
                  "head": {"type": "CenterHead", "tasks": ["car", "ped"]}},
        "train": {"epochs": 20, "lr": 0.001, "amp": True, "warmup": 0.1},  # later base wins
        "name": "child",
    }
    assert isinstance(cfg, Config) and cfg.model.backbone.channels == 128
    assert cfg.get_path("model.head.type") == "CenterHead" and cfg.get_path("model.nope", 3) == 3
    with pytest.raises(AttributeError, match="no key 'nope'"):
        _ = cfg.nope


def test_single_base_string_and_nested_bases(tmp_path: Path, tree: Path):
    grandchild = write(tmp_path / "gc.yaml", "_base_: exp/child.yaml\ntrain: {epochs: 3}\n")
    cfg = load_config(grandchild)
    assert cfg.train.epochs == 3 and cfg.model.backbone.channels == 128 and cfg.train.warmup == 0.1


def test_delete_replaces_inherited_mapping(tmp_path: Path, tree: Path):
    path = write(tmp_path / "exp" / "del.yaml", """
_base_: child.yaml
model:
  backbone: {_delete_: true, type: DSVT, dim: 192}
""")
    cfg = load_config(path)
    assert cfg.model.backbone == {"type": "DSVT", "dim": 192}
    assert cfg.model.head.type == "CenterHead"  # siblings still merged
    assert merge({"a": {"x": 1}}, {"a": {"_delete_": True, "b": {"_delete_": True, "y": 2}}}) == {"a": {"b": {"y": 2}}}


def test_overrides_are_yaml_typed(tree: Path):
    cfg = load_config(tree, overrides=["train.epochs=7", "train.lr=1e-4", "train.amp=false",
                                       "model.backbone.depths=[1, 2, 3]", "model.backbone.type=DSVT",
                                       "train.warmup=1", "+train.new.deep=abc"])
    assert cfg.train.epochs == 7 and isinstance(cfg.train.epochs, int)
    assert cfg.train.lr == pytest.approx(1e-4) and isinstance(cfg.train.lr, float)
    assert cfg.train.amp is False
    assert cfg.model.backbone.depths == [1, 2, 3]
    assert cfg.model.backbone.type == "DSVT"
    assert cfg.train.warmup == 1.0 and isinstance(cfg.train.warmup, float)  # int accepted for a float key
    assert cfg.train.new.deep == "abc"


def test_scientific_floats_in_files(tmp_path: Path):
    cfg = load_config(write(tmp_path / "a.yaml", "lr: 1e-3\nwd: 5E+2\nname: 1e\n"))
    assert cfg.lr == pytest.approx(1e-3) and cfg.wd == 500.0 and cfg.name == "1e"


@pytest.mark.parametrize("override,match", [
    ("train.epoch=3", r"unknown key 'train.epoch'.*known here: \['amp', 'epochs', 'lr', 'warmup'\].*\+train.epoch"),
    ("trian.epochs=3", r"unknown key 'trian'"),
    ("train.epochs=abc", r"key 'train.epochs' expects int.*got str"),
    ("train.epochs=2.5", r"key 'train.epochs' expects int.*got float"),
    ("train.amp=1", r"key 'train.amp' expects bool"),
    ("model.backbone.depths=3", r"key 'model.backbone.depths' expects list"),
    ("train.epochs.x=3", r"'train.epochs' is a int, not a mapping"),
    ("train.epochs", r"must look like key.path=value"),
    ("train..epochs=1", r"empty key part"),
    ("train.epochs=[1, ", r"not valid YAML"),
])
def test_override_errors_name_the_key(tree: Path, override: str, match: str):
    with pytest.raises(ConfigError, match=match):
        load_config(tree, overrides=[override])


def test_file_errors_name_the_file(tmp_path: Path):
    with pytest.raises(ConfigError, match="config file not found: .*missing.yaml"):
        load_config(tmp_path / "missing.yaml")
    bad_base = write(tmp_path / "bb.yaml", "_base_: [nothere.yaml]\n")
    with pytest.raises(ConfigError, match=r"bb.yaml: '_base_' names 'nothere.yaml', which does not exist"):
        load_config(bad_base)
    a = write(tmp_path / "a.yaml", "_base_: b.yaml\nx: 1\n")
    write(tmp_path / "b.yaml", "_base_: a.yaml\ny: 2\n")
    with pytest.raises(ConfigError, match=r"cycle: .*a.yaml -> .*b.yaml -> .*a.yaml"):
        load_config(a)
    with pytest.raises(ConfigError, match=r"broken.yaml: invalid YAML"):
        load_config(write(tmp_path / "broken.yaml", "a: [1, 2\n"))
    with pytest.raises(ConfigError, match=r"list.yaml: the top level must be a mapping, got list"):
        load_config(write(tmp_path / "list.yaml", "- 1\n- 2\n"))
    with pytest.raises(ConfigError, match=r"badbase.yaml: key '_base_' must be a file name or a list"):
        load_config(write(tmp_path / "badbase.yaml", "_base_: {a: 1}\n"))
    assert load_config(write(tmp_path / "empty.yaml", "")) == {}


def test_dump_round_trip(tmp_path: Path, tree: Path):
    cfg = load_config(tree, overrides=["train.lr=2.5e-5", "+extra={a: [1, 2.0, null, 'x: y']}"])
    text = cfg.dump()
    assert yaml.safe_load(text) == cfg
    again = load_config(write(tmp_path / "dumped.yaml", text))
    assert again == cfg and again.dump() == text
    assert config_from_dict({"a": {"b": (1, 2)}}, ["a.b=[3]"]) == {"a": {"b": [3]}}
    plain = apply_overrides({"x": {"y": 1}}, ["x.y=2"])
    assert plain == {"x": {"y": 2}} and type(plain) is dict


# ---- registry -----------------------------------------------------------------------------------------
REG = Registry("backbone")


@REG.register()
class Tiny:
    def __init__(self, channels: int, depth: int = 2) -> None:
        self.channels, self.depth = channels, depth


@REG.register("wide")
def make_wide(channels: int, **kwargs) -> dict:
    return {"channels": channels, **kwargs}


def test_registry_builds_and_reports_errors():
    obj = REG.build(config_from_dict({"type": "Tiny", "channels": 8}), where="model.backbone", depth=3)
    assert isinstance(obj, Tiny) and (obj.channels, obj.depth) == (8, 3)
    assert REG.build({"type": "wide", "channels": 4, "anything": [1]}) == {"channels": 4, "anything": [1]}
    assert REG.names() == ["Tiny", "wide"] and "Tiny" in REG
    with pytest.raises(ConfigError, match=r"unknown backbone type 'Tyni' at model.backbone; valid names: Tiny, wide"):
        REG.build({"type": "Tyni"}, where="model.backbone")
    with pytest.raises(ConfigError, match=r"model.backbone: Tiny has no parameter\(s\) \['chanels'\]; valid: "
                                          r"\['channels', 'depth'\]"):
        REG.build({"type": "Tiny", "chanels": 8}, where="model.backbone")
    with pytest.raises(ConfigError, match=r"model.backbone: Tiny needs parameter\(s\) \['channels'\]"):
        REG.build({"type": "Tiny"}, where="model.backbone")
    with pytest.raises(ConfigError, match=r"model.backbone: expected a mapping with a 'type' key"):
        REG.build({"channels": 3}, where="model.backbone")
    with pytest.raises(KeyError, match="already registered"):
        REG.register("Tiny")(make_wide)
    REG.register("Tiny")(Tiny)  # registering the same object again is harmless


def test_yaml_loader_is_safe_and_reads_scientific_floats():
    import yaml

    from pointwin.config import yaml_load

    assert yaml_load("lr: 1e-3\nn: 5E+2") == {"lr": 1e-3, "n": 500.0}
    with pytest.raises(yaml.constructor.ConstructorError):
        yaml_load('x: !!python/object/apply:os.system ["echo unsafe"]')
