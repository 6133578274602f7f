"""Level and power of the paper test and the recommended test on the nulls real traces have.

Each row draws `n_datasets` datasets from a `simulation.design` and runs both tests on all of them
as one vmapped computation per test (`permutation_test_batch`, `conditional_test_batch`; the
recommended test gets the sequence ids in the clustered design). A rejection is p <= alpha. The
interval is the Clopper-Pearson 99% interval of the rejection rate; a test is valid on a null
when that interval reaches down to alpha (its rate is not significantly above alpha).

Used by `benchmarks/validity.py` (the full table, >= 200 datasets per row) and
`tests/stats/test_validity.py` (a fast version with fewer datasets).
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import numpy as np
from scipy import stats

from routecal.stats import simulation
from routecal.stats.conditional import conditional_test_batch
from routecal.stats.diagnostics import permutation_test_batch


class Scenario(NamedTuple):
    """name: row label; design: `simulation.DESIGNS` entry; n: examples; effect: planted effect
    (0 = a null); kwargs: extra `simulation.design` arguments."""

    name: str
    design: str
    n: int
    effect: float = 0.0
    kwargs: dict[str, Any] = {}


# The numbers: confounded N = 2000 (c ~ U(0.5, 1)), tied N = 1500, 100 sequences x 30
# tokens, planted P(correct) = c + 0.08 sign(routing) at N = 3000 (and a harder 0.03).
SCENARIOS = (
    Scenario("confounded null", "confounded", 2000, kwargs={"conf_low": 0.5}),
    Scenario("binary routing, correct-first", "binary", 1500),
    Scenario("constant routing, correct-first", "constant", 1500),
    Scenario("clustered null (100 x 30)", "clustered", 3000),
    Scenario("exchangeable null", "sign", 3000),
    Scenario("power: c + 0.08 sign(r)", "sign", 3000, 0.08),
    Scenario("power: c + 0.03 sign(r)", "sign", 3000, 0.03),
)


# The CI version: the four nulls of the issue and its planted effect (one design compile each).
FAST_SCENARIOS = tuple(s for s in SCENARIOS if s.name != "exchangeable null" and s.effect != 0.03)


class Row(NamedTuple):
    """One scenario: rejections out of n_datasets and the 99% intervals, paper vs recommended."""

    name: str
    n_datasets: int
    paper: int
    paper_ci: tuple[float, float]
    conditional: int
    conditional_ci: tuple[float, float]


def _ci(k: int, n: int) -> tuple[float, float]:
    ci = stats.binomtest(int(k), n).proportion_ci(0.99)
    return float(ci.low), float(ci.high)


def run(
    key: Any,
    *,
    n_datasets: int = 200,
    n_permutations: int = 199,
    alpha: float = 0.05,
    scenarios: tuple[Scenario, ...] = SCENARIOS,
    n: int | None = None,
) -> list[Row]:
    """Runs every scenario; row i uses `fold_in(key, i)` for the data and the tests.

    `n` overrides every scenario's size (one shape for all rows: fewer compilations).
    """
    key = jax.random.key(key) if isinstance(key, int) else key
    rows = []
    for i, sc in enumerate(scenarios):
        sc = sc if n is None else sc._replace(n=n)
        k = jax.random.fold_in(key, i)
        d = simulation.design(
            jax.random.fold_in(k, 0), sc.design, sc.n, n_datasets=n_datasets, effect=sc.effect,
            **sc.kwargs,
        )
        paper = permutation_test_batch(
            d.confidence, d.correct, d.routing, key=jax.random.fold_in(k, 1),
            n_permutations=n_permutations,
        )
        cond = conditional_test_batch(
            d.confidence, d.correct, d.routing, key=jax.random.fold_in(k, 2),
            clusters=d.clusters if sc.design == "clustered" else None,
            n_permutations=n_permutations,
        )
        kp = int(np.sum(paper.p_value <= alpha))
        kc = int(np.sum(cond.p_value <= alpha))
        rows.append(Row(sc.name, n_datasets, kp, _ci(kp, n_datasets), kc, _ci(kc, n_datasets)))
    return rows


def format_table(rows: list[Row], alpha: float = 0.05) -> str:
    """A markdown table of rejection rates with their 99% intervals."""
    out = [
        "| scenario | datasets | paper test: rate [99% CI] | recommended: rate [99% CI] |",
        "| --- | --- | --- | --- |",
    ]
    def cell(r: Row, k: int, ci: tuple[float, float]) -> str:
        flag = "" if ci[0] <= alpha or "power" in r.name else " (above alpha)"
        return f"{k / r.n_datasets:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]{flag}"

    for r in rows:
        out.append(
            f"| {r.name} | {r.n_datasets} | {cell(r, r.paper, r.paper_ci)} | "
            f"{cell(r, r.conditional, r.conditional_ci)} |"
        )
    return "\n".join(out)
