"""Post-hoc calibration probes and the matched probe comparison (AR-CondCal and its controls).

Every probe is fitted on a calibration split and maps new examples to a calibrated confidence in
[0, 1] (the probability that the model's top-1 prediction is correct). Each is a pair of pure
functions (`*_fit` -> NamedTuple params, `*_apply`) with a thin class on top (`fit` then
`predict`; `predict` before `fit` raises ValueError); classes accept a `ProbeData` or arrays.

  data.py             ProbeData (from `routecal.files.predictions`) and the input coercions
  scaling.py          TemperatureScaling, PlattScaling, HistogramBinning, IsotonicCalibration
  nadaraya_watson.py  NadarayaWatsonProbe (confidence; AR-CondCal; entropy control)
  mlp.py              MLPProbe (full, capacity-matched, shuffled)
  compare.py          compare_probes, probe_comparison, summarise_probes

Metrics live in `routecal.stats.binary` (binary_nll, binary_brier, worst_group_ece, PROB_CLIP);
seed bands and the verdict rule in `routecal.stats.seeds`. See docs/ARCHITECTURE.md.
"""

from routecal.probes.compare import (
    METRICS,
    compare_probes,
    probe_comparison,
    probe_label,
    probe_metrics,
    summarise_probes,
)
from routecal.probes.data import ProbeData
from routecal.probes.mlp import MLPProbe
from routecal.probes.nadaraya_watson import FEATURE_SETS, NadarayaWatsonProbe
from routecal.probes.scaling import (
    HistogramBinning,
    IsotonicCalibration,
    PlattScaling,
    TemperatureScaling,
)
from routecal.stats.binary import worst_group_ece as worst_routing_tertile_ece

__all__ = [
    "FEATURE_SETS",
    "METRICS",
    "HistogramBinning",
    "IsotonicCalibration",
    "MLPProbe",
    "NadarayaWatsonProbe",
    "PlattScaling",
    "ProbeData",
    "TemperatureScaling",
    "compare_probes",
    "probe_comparison",
    "probe_label",
    "probe_metrics",
    "summarise_probes",
    "worst_routing_tertile_ece",
]
