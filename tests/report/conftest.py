"""Fixtures for the report tests: loading a script from experiments/ as a module."""

from __future__ import annotations

import importlib.util
import pathlib

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[2]


@pytest.fixture
def experiment_script():
    """Returns load(name) -> the module experiments/<name>.py."""

    def load(name: str):
        spec = importlib.util.spec_from_file_location(name, ROOT / "experiments" / f"{name}.py")
        mod = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mod)
        return mod

    return load
