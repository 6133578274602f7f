import ml_collections
import numpy as np
import pytest

import routecal as rc
from routecal import cli, config


def test_lazy_submodule_and_unknown_attribute():
    assert rc.calibration.ece is not None
    with pytest.raises(AttributeError):
        _ = rc.not_a_module


def test_override_unknown_key_is_an_error(tmp_path):
    p = tmp_path / "c.py"
    p.write_text(
        "import ml_collections\n"
        "def get_config(arg=None):\n"
        "  c = ml_collections.ConfigDict()\n"
        "  c.lr = 0.1\n  c.model = ml_collections.ConfigDict({'depth': 2})\n"
        "  c.variant = arg or 'default'\n  return c\n"
    )
    cfg = config.load_config(f"{p}:quick", ["model.depth=4", "lr=1"])
    assert cfg.model.depth == 4 and cfg.lr == 1.0 and cfg.variant == "quick"
    with pytest.raises(ValueError, match="unknown key 'model.dpeth'"):
        config.load_config(str(p), ["model.dpeth=4"])
    with pytest.raises(ValueError, match="no such file"):
        config.load_config(str(tmp_path / "missing.py"))
    assert isinstance(cfg, ml_collections.ConfigDict)


def test_cli_override_parsing():
    assert cli._split_overrides(["--config.a.b=3", "--config.c", "x"]) == ["a.b=3", "c=x"]
    with pytest.raises(ValueError, match="unrecognised argument '--bogus'"):
        cli._split_overrides(["--bogus"])


def test_digits_placeholder_shapes():
    ds = rc.data.load_dataset(ml_collections.ConfigDict({"name": "digits", "seed": 0}))
    assert ds.train.tokens.shape[1:] == (16, 4)
    assert len(ds.train) + len(ds.calib) + len(ds.test) == 1797
    assert np.all(ds.train.tokens <= 1.0)


def test_cli_distributed_flag_is_global():
    from routecal.cli import build_parser

    args, _ = build_parser().parse_known_args(["--distributed", "report", "--workdir", "w"])
    assert args.distributed and args.command == "report"
    args, _ = build_parser().parse_known_args(["report", "--workdir", "w"])
    assert not args.distributed
