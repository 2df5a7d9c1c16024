"""Config loading: YAML + dotted overrides, unknown keys and wrong types rejected with the key named."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import pytest

from zhongjing.config import describe, load_config
from zhongjing.errors import ConfigError


@dataclass
class Lora:
    rank: int = 16
    alpha: float = 32.0
    targets: list[str] = field(default_factory=lambda: ["q_proj", "v_proj"])


@dataclass
class Stage:
    lr: float = 7e-5
    epochs: int = 3
    fp16: bool = False
    strategy: Literal["all", "last", "everything"] = "all"
    output: str = "runs/x"
    resume_from: str | None = None
    lora: Lora = field(default_factory=Lora)


def test_yaml_and_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("lr: 5e-5\nepochs: 4\nlora:\n  rank: 32\n", encoding="utf-8")
    cfg = load_config(Stage, f, ["lora.alpha=64", "fp16=true", "lora.targets=q_proj,k_proj", "strategy=last"])
    assert cfg.lr == 5e-5 and cfg.epochs == 4 and cfg.fp16 is True and cfg.strategy == "last"
    assert cfg.lora == Lora(rank=32, alpha=64.0, targets=["q_proj", "k_proj"])
    assert load_config(Stage, None, ["resume_from=null"]).resume_from is None
    assert load_config(Stage, None, ["output=123"]).output == "123"


@pytest.mark.parametrize(
    "override, message",
    [
        ("lrr=1", "unknown config key 'lrr'"),
        ("lora.rnak=8", "unknown config key 'lora.rnak'"),
        ("epochs=three", "config key 'epochs': expected an integer"),
        ("epochs=2.5", "config key 'epochs': expected an integer"),
        ("fp16=maybe", "config key 'fp16': expected true/false"),
        ("strategy=first", "config key 'strategy': expected one of"),
        ("lora=5", "config key 'lora': expected a mapping"),
        ("lora.rank.x=1", "config key 'lora.rank': expected an integer"),
        ("lr", "not of the form key=value"),
        ("lora=[1", "override 'lora=.1': the value is not valid YAML"),  # was yaml's traceback
        ("lora={rank: 4, rank: 8}", "key 'rank' given again"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(")):
        load_config(Stage, None, [override])


def test_bad_yaml_names_the_file(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("lr: [1,\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"bad.yaml: invalid YAML \(.*at line 2, column 1\)$"):
        load_config(Stage, bad)


def test_a_key_given_twice_is_refused_with_both_lines(tmp_path):
    """Plain YAML keeps the second value silently: an edited config would train with whichever came last."""
    twice = tmp_path / "twice.yaml"
    twice.write_text("epochs: 1\nlora:\n  rank: 8\n  alpha: 4\n  rank: 16\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"twice.yaml: invalid YAML \(key 'rank' given again \(first at line 3, "
                                          r"column 3\) at line 5, column 3\)"):
        load_config(Stage, twice)
    top = tmp_path / "top.yaml"
    top.write_text("lr: 0.1\nepochs: 2\nlr: 0.2\n", encoding="utf-8")
    with pytest.raises(ConfigError, match="key 'lr' given again"):
        load_config(Stage, top)
    merged = tmp_path / "merged.yaml"  # a YAML merge key overridden on purpose is not a duplicate
    from zhongjing.config import read_yaml

    merged.write_text("a: &b {rank: 4, alpha: 8.0}\nlora: {<<: *b, rank: 16}\n", encoding="utf-8")
    assert read_yaml(merged)["lora"] == {"rank": 16, "alpha": 8.0}
    unknown = tmp_path / "u.yaml"
    unknown.write_text("lora:\n  rank: 8\n  drop: 0.1\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"u.yaml: unknown config key 'lora.drop'"):
        load_config(Stage, unknown)
    with pytest.raises(ConfigError, match="not found"):
        load_config(Stage, tmp_path / "missing.yaml")


def test_describe_lists_every_key():
    text = "\n".join(describe(Stage))
    for key in ("lr", "epochs", "fp16", "strategy", "output", "resume_from", "lora.rank", "lora.alpha", "lora.targets"):
        assert f"  {key} = " in text


@dataclass
class Other:
    lora: Lora = field(default_factory=lambda: Lora(rank=4))


def test_describe_shows_the_stage_default_of_a_section():
    assert "  lora.rank = 4  [int]" in describe(Other)
