"""The integers the conditional test's scores take from sorting: by XLA's sorts, or on the host.

Shapes: `N` examples.

The recommended test's scores (`conditional.score_matrix`) need three things that come from sorting:
mid-ranks of routing, mid-ranks and tie levels of confidence (its strata, `cluster_inference.strata`),
and with clusters the dense (stratum, unit) ids. All are exact integers. On an accelerator they are
computed inside the jit (`orders`, `ranks`' one-operand integer sorts). On the CPU backend XLA's
sort is single-threaded and slower than numpy's vectorised quicksort, so `host_orders` computes the
same integers with numpy, routing and confidence on two threads (issue 26: the scores' sorts took
~0.3 of ~0.5 CPU s at N = 1M). Everything after the sorts runs in the same jit either way, from the
same integers through the same operations, so statistics, nulls and p-values are bit-for-bit those
of the all-XLA path (checked against it in tests/stats/test_conditional_orders.py).
"""

from __future__ import annotations

from concurrent import futures
from typing import Any, NamedTuple

import numpy as np

from routecal.stats import cluster_inference as ci
from routecal.stats import ranks


class Orders(NamedTuple):
    """What the scores need from sorting, as exact integers: confidence's `ranks.tie_levels`
    (first, last, level [N] int32, D []), routing's tie blocks (first, last [N] int32), and the dense
    (stratum, unit) ids [N] (None when every example is its own unit, or to compute them)."""

    c_first: Any
    c_last: Any
    c_level: Any
    c_levels: Any
    r_first: Any
    r_last: Any
    groups: Any = None


def orders(confidence, routing) -> Orders:
    """`Orders` by XLA's sorts (jittable, vmappable; `ranks`); groups left to `crossfit`."""
    r_first, r_last, _ = ranks.tie_blocks(routing)
    return Orders(*ranks.tie_levels(confidence), r_first, r_last)


def host_orders(confidence: np.ndarray, routing: np.ndarray, units: np.ndarray, *, n_strata: int,
                n_units: int, stratum_size: int) -> Orders:
    """`orders` in numpy (`ranks.host_tie_levels`), the two vectors ranked on two threads: the same
    integers in about half the wall time of XLA:CPU's single-threaded sorts at N = 1M (0.155 s, load
    3.8, against ~0.3 s: issue 26)."""
    with futures.ThreadPoolExecutor(1) as pool:
        route = pool.submit(ranks.host_tie_levels, routing)
        conf = ranks.host_tie_levels(confidence)
        groups = None
        if n_units != confidence.shape[0]:  # `cluster_inference._groups`' dense pair ids
            strat = ci.strata_from_levels(*conf, n_strata, stratum_size).astype(np.int64)
            groups = ranks.host_tie_levels(strat * n_units + units.astype(np.int64))[2]
        r_first, r_last = route.result()[:2]
    return Orders(*conf, r_first, r_last, groups)
