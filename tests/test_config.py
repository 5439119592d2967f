from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from foresight.config import ConfigError, build_config, from_dict, merge, parse_overrides, preset, to_dict


@dataclass
class Inner:
    depth: int = 2
    widths: tuple[int, ...] = (8, 16)


@dataclass
class Outer:
    lr: float = 1e-3
    name: str = "run"
    use_ema: bool = False
    inner: Inner = field(default_factory=Inner)
    PRESETS: ClassVar[dict] = {"tiny": {"lr": 0.1, "inner": {"depth": 1}}}


def test_overrides_both_syntaxes_and_nesting(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("preset: tiny\nname: from_yaml\ninner:\n  widths: [1, 2, 3]\n")
    cfg = build_config(Outer, ["--config", str(f), "inner.depth=5", "--use-ema", "--lr", "3e-4"])
    assert cfg.lr == 3e-4 and cfg.name == "from_yaml" and cfg.use_ema is True
    assert cfg.inner.depth == 5 and cfg.inner.widths == (1, 2, 3)


def test_preset_then_override_order():
    assert preset(Outer, "tiny").inner.depth == 1
    assert build_config(Outer, ["--preset", "tiny", "lr=0.5"]).lr == 0.5
    with pytest.raises(ConfigError, match="no preset 'huge'"):
        preset(Outer, "huge")


def test_type_errors_name_the_field():
    with pytest.raises(ConfigError, match="lr: expected a float"):
        merge(Outer(), {"lr": "fast"})
    with pytest.raises(ConfigError, match=r"inner.depth: expected an int"):
        merge(Outer(), {"inner.depth": 1.5})
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        merge(Outer(), {"nope": 1})


def test_round_trip_through_dict():
    cfg = build_config(Outer, ["inner.widths=[4,4]"])
    assert from_dict(Outer, to_dict(cfg)) == cfg


def test_parse_overrides_values():
    assert parse_overrides(["a=1", "--b", "x", "--c=2.5", "--flag"]) == {"a": 1, "b": "x", "c": 2.5, "flag": True}
    with pytest.raises(ConfigError):
        parse_overrides(["positional"])


def test_command_line_lists_and_negated_flags():
    @dataclass
    class Opts:
        tasks: tuple[str, ...] = ("reach-v3",)
        sizes: list[int] = field(default_factory=list)
        videos: bool = True
        out: str = ""

    assert parse_overrides(["--tasks", "a", "b", "--out", "x", "c=1"]) == {"tasks": ["a", "b"], "out": "x", "c": 1}
    cfg = build_config(Opts, ["--tasks", "push-v3", "drawer-close-v3", "--no-videos", "sizes=16,32"])
    assert cfg.tasks == ("push-v3", "drawer-close-v3") and cfg.videos is False and cfg.sizes == [16, 32]
    assert build_config(Opts, ["--tasks=push-v3"]).tasks == ("push-v3",)  # one item
    assert build_config(Opts, ["tasks=[a,b]", "--videos"]).tasks == ("a", "b")
    assert build_config(Opts, ["tasks=a,b"]).tasks == ("a", "b")
    assert build_config(Opts, ["--sizes", "-1", "2"]).sizes == [-1, 2]  # negative numbers are values
    with pytest.raises(ConfigError, match="sizes"):
        build_config(Opts, ["sizes=a,b"])
    with pytest.raises(ConfigError, match="no_such"):
        build_config(Opts, ["--no-such"])


def test_fixed_length_tuple_fields_are_typed_per_position():
    @dataclass
    class Sized:
        frame_size: tuple[int, int] = (240, 320)
        pair: tuple[str, float] = ("a", 1.0)

    cfg = build_config(Sized, ["--frame-size", "120", "160", "pair=[b,2]"])
    assert cfg.frame_size == (120, 160) and cfg.pair == ("b", 2.0)
    with pytest.raises(ConfigError, match="2 items"):
        build_config(Sized, ["frame_size=[1,2,3]"])


def test_mapping_fields_are_typed_per_entry():
    @dataclass
    class WithMap:
        heights: dict[str, float] = field(default_factory=dict)

    assert build_config(WithMap, ["heights={push-v3: 1, reach-v3: 0.5}"]).heights == {"push-v3": 1.0, "reach-v3": 0.5}
    assert isinstance(build_config(WithMap, ["heights={push-v3: 1}"]).heights["push-v3"], float)
    assert build_config(WithMap, []).heights == {}
    with pytest.raises(ConfigError, match=r"heights\['push-v3'\]: expected a float, got 'high'"):
        build_config(WithMap, ["heights={push-v3: high}"])
    with pytest.raises(ConfigError, match="heights: expected a mapping"):
        build_config(WithMap, ["heights=[1, 2]"])
