"""routecal: routing-conditional calibration for routing-augmented transformers.

Public API (see docs/ARCHITECTURE.md)::

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

from routecal._version import __version__

# Public name -> module. The statistics live in `routecal.stats`, the pipelines in
# `routecal.study`; the short names (`rc.calibration`, `rc.diagnostics`, ...) are the API contract.
_SUBMODULES = {
    "calibration": "routecal.stats.calibration",
    "cli": "routecal.cli",
    "config": "routecal.config",
    "data": "routecal.data",
    "diagnostics": "routecal.stats.diagnostics",
    "flops": "routecal.flops",
    "kernels": "routecal.stats.kernels",
    "models": "routecal.models",
    "parallel": "routecal.parallel",
    "predict": "routecal.training.predict",
    "pretrained": "routecal.models.pretrained",
    "predictions": "routecal.files.predictions",
    "probes": "routecal.probes",
    "report": "routecal.report",
    "simulation": "routecal.stats.simulation",
    "stats": "routecal.stats",
    "study": "routecal.study.run",
    "traces": "routecal.training.traces",
    "train": "routecal.training.train",
    "uncertainty": "routecal.stats.uncertainty",
}

__all__ = ["__version__", *_SUBMODULES]


def __getattr__(name: str) -> Any:
    if name in _SUBMODULES:
        module = importlib.import_module(_SUBMODULES[name])
        globals()[name] = module
        return module
    raise AttributeError(f"module 'routecal' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(__all__)
