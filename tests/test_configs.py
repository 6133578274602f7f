"""configs/: typed variants (configs/common.py:parse_arg), every variant loads, quick learns."""

import importlib.util
import pathlib

import pytest

from routecal.config import load_config

CONFIGS = pathlib.Path(__file__).resolve().parents[1] / "configs"


def _common():
    spec = importlib.util.spec_from_file_location("configs_common", CONFIGS / "common.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_parse_arg_typed_variants():
    parse = _common().parse_arg
    spec = {"residual": ("full", "block", "standard"), "quick": False, "steps": 10, "lr": 0.1}
    assert parse(None, **spec).to_dict() == {"residual": "full", "quick": False, "steps": 10,
                                             "lr": 0.1}
    v = parse("block,quick,steps=3,lr=0.5", **spec)
    assert (v.residual, v.quick, v.steps, v.lr) == ("block", True, 3, 0.5)
    assert parse("quick=false,residual=standard", **spec).quick is False
    for bad, match in (("wide", "unknown variant"), ("depth=3", "unknown key"),
                       ("steps=x", "not a int"), ("full,block", "given twice"),
                       ("residual=deep", "not one of")):
        with pytest.raises(ValueError, match=match):
            parse(bad, **spec)


@pytest.mark.parametrize(
    "spec",
    ["attnres_digits.py", "attnres_digits.py:block,quick", "attnres_digits.py:standard,tiny",
     "moe_digits.py:full,quick", "vmoer_digits.py:vtsr,retrofit,quick", "vmoer_digits.py:det",
     "study.py", "study.py:quick", "study.py:quick,tiny"],
)
def test_every_variant_loads_with_no_packed_strings(spec):
    cfg = load_config(str(CONFIGS / spec))

    def walk(node, path):
        for k, v in node.items():
            if hasattr(v, "items"):
                walk(v, f"{path}{k}.")
            elif isinstance(v, str) and k != "title":  # prose
                assert ";" not in v and not ("," in v and k != "config"), f"{path}{k}={v!r}"

    walk(cfg, "")


def test_quick_is_not_tiny():
    quick = load_config(str(CONFIGS / "attnres_digits.py:quick"))
    tiny = load_config(str(CONFIGS / "attnres_digits.py:tiny"))
    assert quick.train.steps >= 300 and tiny.train.steps == 12


@pytest.mark.slow
def test_quick_attnres_learns(tmp_path):
    """configs/attnres_digits.py:quick reaches >= 85% test accuracy on digits (the docstring's claim)."""
    from routecal.training import train

    final = train.train_and_evaluate(load_config(str(CONFIGS / "attnres_digits.py:quick")),
                                     tmp_path)
    assert final["test/accuracy"] >= 0.85


def test_wrong_type_override_is_a_value_error():
    with pytest.raises(ValueError, match="train.steps='abc' has type str"):
        load_config(str(CONFIGS / "attnres_digits.py"), ["train.steps=abc"])
    with pytest.raises(ValueError, match="diagnostics.features"):  # no packed strings for lists
        load_config(str(CONFIGS / "study.py"), ["diagnostics.features='H_mean,H_last'"])
