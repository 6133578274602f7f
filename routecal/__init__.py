"""routecal: routing-conditional calibration for routing-augmented transformers.

Public API (see DESIGN.md)::

    import routecal as rc
    rc.calibration.ece(confidence, correct, n_bins=15, binning="width")
    rc.diagnostics.within_bin_permutation_test(confidence, correct, routing, key=key)
    rc.kernels.nadaraya_watson(x_train, y_train, x_query, bandwidth)
    rc.probes.NadarayaWatsonProbe(...).fit(...).predict(...)

Submodules are imported lazily on first attribute access, so ``import routecal`` is cheap and
the statistics can be used without touching the model code.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_SUBMODULES = (
    "calibration",
    "cli",
    "config",
    "data",
    "diagnostics",
    "flops",
    "kernels",
    "models",
    "parallel",
    "predict",
    "probes",
    "report",
    "simulation",
    "study",
    "traces",
    "train",
    "uncertainty",
    "vmoer_eval",
)

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(f".{name}", __name__)
        globals()[name] = module
        return module
    raise AttributeError(f"module 'routecal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
