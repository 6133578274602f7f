"""Loading ml_collections config files: `path/to/config.py[:arg]` plus `key=value` overrides.

Configs are Python files with `get_config(arg=None) -> ConfigDict`. The returned config is locked,
so an override naming an unknown key raises a ValueError listing the valid keys at that level.
"""

from __future__ import annotations

import ast
import importlib.util
import pathlib
import sys
import types
from collections.abc import Sequence

import ml_collections


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """Loads `spec` = "configs/x.py" or "configs/x.py:quick" and applies `key.sub=value` overrides.

    Raises:
      ValueError: if the file is missing, has no get_config, or an override names an unknown key.
    """
    path_str, _, arg = spec.partition(":")
    path = pathlib.Path(path_str)
    if not path.is_file():
        raise ValueError(f"config: no such file {path_str!r}")
    module = _exec_config(path)
    if not hasattr(module, "get_config"):
        raise ValueError(f"config: {path_str} defines no get_config()")
    cfg = module.get_config(arg) if arg else module.get_config()
    if not isinstance(cfg, ml_collections.ConfigDict):
        raise ValueError(f"config: {path_str}:get_config must return a ConfigDict")
    cfg = ml_collections.ConfigDict(cfg)  # copy
    cfg.lock()
    apply_overrides(cfg, overrides)
    return cfg


_SIBLINGS = ("common",)  # modules configs import from their own folder (configs/common.py)


def _exec_config(path: pathlib.Path) -> types.ModuleType:
    """Executes a config file with its directory importable (so it can `import common`)."""
    mod_spec = importlib.util.spec_from_file_location(f"_routecal_config_{path.stem}", path)
    module = importlib.util.module_from_spec(mod_spec)
    assert mod_spec.loader is not None
    folder = str(path.resolve().parent)
    for name in _SIBLINGS:  # imported afresh from this config's folder on every load
        sys.modules.pop(name, None)
    sys.path.insert(0, folder)
    try:
        mod_spec.loader.exec_module(module)
    finally:
        sys.path.remove(folder)
        for name in _SIBLINGS:
            sys.modules.pop(name, None)
    return module


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Sequence[str]) -> None:
    """Applies `a.b=value` strings in place; values parsed as Python literals when possible."""
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ValueError(f"override {item!r}: expected key=value")
        set_key(cfg, key.strip(), _parse_value(raw.strip()))


def set_key(cfg: ml_collections.ConfigDict, dotted: str, value: object) -> None:
    """Sets `cfg[dotted] = value`, raising ValueError naming the unknown key and the valid ones."""
    parts = dotted.split(".")
    node = cfg
    for i, part in enumerate(parts):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            where = ".".join(parts[:i]) or "<root>"
            valid = sorted(node.keys()) if isinstance(node, ml_collections.ConfigDict) else []
            raise ValueError(
                f"config: unknown key {dotted!r} (no {part!r} in {where}; valid: {valid})"
            )
        if i == len(parts) - 1:
            current = node[part]
            if (
                isinstance(current, float)
                and isinstance(value, int)
                and not isinstance(value, bool)
            ):
                value = float(value)
            try:
                node[part] = value
            except TypeError as e:  # ml_collections: a value of the wrong type for the field
                raise ValueError(
                    f"config: {dotted}={value!r} has type {type(value).__name__}, but the field "
                    f"holds {type(current).__name__} (e.g. {current!r})"
                ) from e
        else:
            node = node[part]


def _parse_value(raw: str) -> object:
    try:
        return ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        return raw
