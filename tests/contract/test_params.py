from dataclasses import dataclass, field
from typing import Literal

import pytest

from contract.params import apply_overrides, as_dict, from_dict, load_config


@dataclass(frozen=True)
class Inner:
    compression: float = 1000.0
    kind: Literal["robe", "full"] = "robe"


@dataclass(frozen=True)
class Outer:
    rows: int = 10
    name: str = "x"
    sizes: tuple[int, ...] = (1, 2)
    inner: Inner = field(default_factory=Inner)
    limit: float | None = None


def test_defaults_when_section_missing(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("other:\n  a: 1\n")
    assert load_config(Outer, "outer", p) == Outer()


def test_section_and_nested_overrides(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("outer:\n  rows: 5\n  inner:\n    kind: full\n")
    cfg = load_config(Outer, "outer", p, ["outer.inner.compression=100", "outer.sizes=[3, 4]", "outer.limit=0.5"])
    assert cfg == Outer(rows=5, sizes=(3, 4), inner=Inner(compression=100.0, kind="full"), limit=0.5)
    assert as_dict(cfg)["sizes"] == [3, 4]


@pytest.mark.parametrize(
    "values, message",
    [
        ({"rowz": 1}, "outer.rowz"),
        ({"rows": "many"}, "outer.rows"),
        ({"rows": 1.5}, "expected an integer"),
        ({"inner": {"kind": "qr"}}, "outer.inner.kind"),
        ({"sizes": 3}, "expected a list"),
    ],
)
def test_bad_values_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        from_dict(Outer, values, "outer")


def test_override_errors():
    with pytest.raises(ValueError, match="section 'train'"):
        apply_overrides("outer", {}, ["train.lr=1"])
    with pytest.raises(ValueError, match="not of the form"):
        apply_overrides("outer", {}, ["outer.rows"])


def test_missing_explicit_params_file(tmp_path):
    with pytest.raises(ValueError, match="does not exist"):
        load_config(Outer, "outer", tmp_path / "nope.yaml")


@dataclass(frozen=True)
class WithAlias:
    PARAM_ALIASES = {"inner": "nested.inner"}  # a class attribute (no annotation), not a field
    nested: Outer = field(default_factory=Outer)


def test_alias_puts_a_top_level_key_where_the_dataclass_keeps_it(tmp_path):
    p = tmp_path / "params.yaml"
    p.write_text("w:\n  inner:\n    kind: full\n")
    cfg = load_config(WithAlias, "w", p, ["w.inner.compression=10"])
    assert cfg.nested.inner == Inner(compression=10.0, kind="full")


def test_alias_and_its_target_together_are_refused():
    with pytest.raises(ValueError, match="same setting; set only w.inner"):
        from_dict(WithAlias, {"inner": {}, "nested": {"inner": {}}}, "w")


def test_train_section_takes_the_embedding_at_its_top():
    from dlrm.configs import TrainConfig

    cfg = from_dict(TrainConfig, {"embedding": {"compression": 100}}, "train")
    assert cfg.model.embedding.compression == 100.0
