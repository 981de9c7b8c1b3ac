from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest

from hpctrain.config import apply_overrides, field_docs, from_mapping, load_yaml, to_dict
from hpctrain.errors import ConfigError


@dataclass(kw_only=True, slots=True)
class Opt:
    name: Literal["sgd", "adam"] = "sgd"
    lr: float = field(default=0.1, metadata={"help": "learning rate"})

    def __post_init__(self):
        if self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")


@dataclass(kw_only=True, slots=True)
class Top:
    epochs: int = 1
    out: Path = Path("runs")
    tags: list[str] = field(default_factory=list)
    seed: int | None = None
    optimizer: Opt = field(default_factory=Opt)


def test_nested_and_coercion():
    cfg = from_mapping(Top, {"epochs": 3, "out": "a b", "optimizer": {"lr": 1, "name": "adam"}, "tags": ["x"]})
    assert cfg.epochs == 3 and cfg.out == Path("a b") and cfg.optimizer.lr == 1.0 and cfg.optimizer.name == "adam"
    assert to_dict(cfg) == {"epochs": 3, "out": "a b", "tags": ["x"], "seed": None,
                            "optimizer": {"name": "adam", "lr": 1.0}}


def test_unknown_key_lists_valid_and_suggests():
    with pytest.raises(ConfigError) as e:
        from_mapping(Top, {"optimizer": {"lrr": 0.1}})
    msg = str(e.value)
    assert "'optimizer.lrr'" in msg and "Did you mean 'lr'" in msg and "lr, name" in msg


@pytest.mark.parametrize("data,needle", [
    ({"epochs": "3"}, "epochs: got '3' (str), expected an integer"),
    ({"epochs": True}, "expected an integer"),
    ({"optimizer": {"name": "adamw"}}, "optimizer.name: got 'adamw', expected one of ['sgd', 'adam']"),
    ({"optimizer": {"lr": -1}}, "lr must be > 0"),
    ({"optimizer": 5}, "expected a section"),
    ({"tags": "x"}, "expected a list"),
])
def test_bad_values_name_the_key(data, needle):
    with pytest.raises(ConfigError, match=None) as e:
        from_mapping(Top, data)
    assert needle in str(e.value)


def test_exponent_floats_from_yaml_1_1_are_numbers(tmp_path):
    # PyYAML reads "1e-3" as a string; a float field must still take it.
    p = tmp_path / "c.yaml"
    p.write_text("optimizer:\n  lr: 1e-3\n")
    assert from_mapping(Top, load_yaml(p)).optimizer.lr == 1e-3
    assert from_mapping(Top, apply_overrides({}, ["optimizer.lr=5E-2"])).optimizer.lr == 5e-2
    with pytest.raises(ConfigError, match="expected a number"):
        from_mapping(Top, {"optimizer": {"lr": "fast"}})
    with pytest.raises(ConfigError, match="expected an integer"):
        from_mapping(Top, {"epochs": "1e3"})


def test_overrides_parse_yaml_scalars():
    data = apply_overrides({"optimizer": {"name": "sgd"}}, ["optimizer.lr=0.5", "epochs=2", "out=/x y", "seed=null"])
    cfg = from_mapping(Top, data)
    assert cfg.optimizer.lr == 0.5 and cfg.epochs == 2 and cfg.out == Path("/x y") and cfg.seed is None
    with pytest.raises(ConfigError, match="section.key=value"):
        apply_overrides({}, ["nonsense"])


def test_load_yaml_errors(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_yaml(tmp_path / "nope.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_yaml(bad)
    lst = tmp_path / "list.yaml"
    lst.write_text("- 1\n")
    with pytest.raises(ConfigError, match="must be a mapping"):
        load_yaml(lst)
    with pytest.raises(ConfigError, match="is a directory"):
        load_yaml(tmp_path)
    binary = tmp_path / "shard.h5"
    binary.write_bytes(b"\x89HDF\r\n\x1a\n\x00\x00")
    with pytest.raises(ConfigError, match=r"'.*shard.h5' is not a text file \(byte 0 is not UTF-8"):
        load_yaml(binary)


def test_field_docs():
    rows = {r[0]: r for r in field_docs(Opt)}
    assert rows["lr"][3] == "learning rate" and rows["lr"][2] == 0.1


@dataclass(kw_only=True, slots=True)
class Needs:
    name: str
    when: int | Literal["auto"] = "auto"


@dataclass(kw_only=True, slots=True)
class Buggy:
    n: int = 1

    def __post_init__(self):
        len(self.n)  # a bug in a config class: TypeError, not a user error


def test_missing_required_key_is_a_config_error():
    with pytest.raises(ConfigError, match=r"Needs: missing required key\(s\) 'name'"):
        from_mapping(Needs, {})


def test_type_error_inside_a_config_class_is_not_hidden():
    with pytest.raises(TypeError, match="has no len"):
        from_mapping(Buggy, {"n": 2})


def test_union_error_keeps_what_each_alternative_said():
    with pytest.raises(ConfigError) as e:
        from_mapping(Top, {"seed": "x"})
    assert str(e.value) == "seed: got 'x' (str), expected an integer (or null)"
    with pytest.raises(ConfigError) as e:
        from_mapping(Needs, {"name": "a", "when": "soon"})
    msg = str(e.value)
    assert "when: got 'soon' (str), expected an integer" in msg
    assert "when: got 'soon', expected one of ['auto']" in msg


def test_flags_come_from_dataclass_fields():
    import argparse

    from hpctrain.config import add_flags, flag_values
    from hpctrain.slurm.requeue import RequeuePolicy
    from hpctrain.slurm.retry import RetryPolicy

    p = argparse.ArgumentParser()
    add_flags(p, RequeuePolicy)
    add_flags(p, RetryPolicy, ("retries", "backoff_s"))
    args = p.parse_args([])
    # the defaults are the dataclasses' own: written once
    assert RequeuePolicy(**flag_values(RequeuePolicy, args)) == RequeuePolicy()
    assert RetryPolicy(**flag_values(RetryPolicy, args, ("retries", "backoff_s"))) == RetryPolicy()
    args = p.parse_args(["--max-timeouts", "5", "--signal-delay", "30", "--retry-backoff", "2.5"])
    assert (args.max_timeouts, args.signal_delay_s, args.backoff_s) == (5, 30, 2.5)
    text = " ".join(p.format_help().split())  # argparse wraps lines
    assert "requeues after hitting the time limit (then FAILED) (default 3)" in text
    assert "requeues after preemption (default unlimited)" in text


def test_flags_of_bools_lists_and_choices():
    import argparse

    from hpctrain.config import add_flags, flag_values

    @dataclass(kw_only=True, slots=True)
    class Opts:
        fast: bool = field(default=False, metadata={"help": "go fast"})
        show: bool = field(default=True, metadata={"help": "show it"})
        lines: list[str] = field(default_factory=list, metadata={"help": "a line (repeatable)"})
        kind: Literal["a", "b"] = "a"

    p = argparse.ArgumentParser()
    add_flags(p, Opts)
    assert Opts(**flag_values(Opts, p.parse_args([]))) == Opts()
    got = Opts(**flag_values(Opts, p.parse_args(["--fast", "--no-show", "--lines", "x", "--lines", "y",
                                                 "--kind", "b"])))
    assert got == Opts(fast=True, show=False, lines=["x", "y"], kind="b")
    with pytest.raises(TypeError, match="has no field"):
        add_flags(argparse.ArgumentParser(), Opts, ["nope"])
