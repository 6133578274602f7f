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
from routecal.stats.conditional_batch import conditional_test_batch
from routecal.stats.diagnostics import permutation_test_batch

TESTS = ("paper", "conditional", "omnibus")


class Scenario(NamedTuple):
    """name: row label; design: `simulation.DESIGNS` entry; n: examples; effect: planted effect
    (0 = a null); kwargs: extra `simulation.design` arguments; clusters: pass the design's cluster
    ids to the conditional tests; tests: which of `TESTS` run (paper, monotone conditional,
    omnibus conditional)."""

    name: str
    design: str
    n: int
    effect: float = 0.0
    kwargs: dict[str, Any] = {}
    clusters: bool = False
    tests: tuple[str, ...] = ("paper", "conditional")


# The issue's numbers: confounded N = 2000 (c ~ U(0.5, 1)), tied N = 1500, 100 sequences x 30
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


# Issue 22: few and unbalanced clusters (N = 3000; with K <= 12 clusters both tests use the
# within-cluster t reference, the omnibus test Bonferroni over its columns; the sign-flip nulls
# cannot reach alpha at K <= 5: run with few_clusters="warn"), K = 5 clusters with planted gaps
# between and within, tied confidence levels of very different sizes, non-monotone effects
# (N = 2000), the monotone test's power at c + 0.05 sign(r), and nulls on which routing tracks
# confidence non-linearly (the paper test's inflation).
_COND = ("conditional", "omnibus")
_ALL = ("paper", "conditional", "omnibus")
ISSUE22_SCENARIOS = (
    Scenario("equal clusters 6 x 500", "clustered", 3000, kwargs={"cluster_size": 500},
             clusters=True, tests=_COND),
    Scenario("equal clusters 10 x 300", "clustered", 3000, kwargs={"cluster_size": 300},
             clusters=True, tests=_COND),
    Scenario("equal clusters 60 x 50", "clustered", 3000, kwargs={"cluster_size": 50},
             clusters=True, tests=_COND),
    Scenario("Pareto(1.1) clusters, 60", "pareto", 3000, kwargs={"cluster_size": 50},
             clusters=True, tests=_COND),
    # routing = a_k + 0.1 z: sign(r) is mostly a per-cluster sign, an effect *between* clusters,
    # which the within-cluster reference ("auto" at K <= 12) does not test (power ~alpha)
    Scenario("K = 5 clusters, planted c + 0.08 sign(r) (between clusters)", "clustered", 3000,
             0.08, kwargs={"cluster_size": 600}, clusters=True, tests=_COND),
    Scenario("tied 20/20/320/320/320, r = c", "tied", 1000, tests=_ALL),
    Scenario("tied 20/20/320/320/320, r = 1[c >= 0.6]", "tied_step", 1000, tests=_ALL),
    Scenario("exchangeable null, N = 2000", "sign", 2000, tests=_COND),
    Scenario("tracking null: r = (c - 0.7)^2", "track_square", 2000, kwargs={"conf_low": 0.5},
             tests=_ALL),
    Scenario("tracking null: r = sin(12 c)", "track_sine", 2000, kwargs={"conf_low": 0.5},
             tests=_ALL),
    Scenario("tracking null: r = exp(6 c)", "track_exp", 2000, kwargs={"conf_low": 0.5},
             tests=_ALL),
    Scenario("piled near 1: r = -log(1 - c)", "piled", 2000, kwargs={"conf_low": 0.5},
             tests=_ALL),
    Scenario("power: V-shape c + 0.1 (1 - 2|r|)", "vshape", 2000, 0.1, tests=_ALL),
    Scenario("power: c + 0.08 sign(r) sign(c - 0.6)", "signflip", 2000, 0.08, tests=_ALL),
    Scenario("power: c + 0.05 sign(r)", "sign", 2000, 0.05, tests=_ALL),
    # few clusters (`restudentised`; appended, so the rows above keep their keys): K = 4 and 5
    # cannot reach alpha (smallest p 2^(1-K) = 0.125, 0.0625), K = 8 can
    Scenario("equal clusters 4 x 750", "clustered", 3000, kwargs={"cluster_size": 750},
             clusters=True, tests=_COND),
    Scenario("equal clusters 5 x 600", "clustered", 3000, kwargs={"cluster_size": 600},
             clusters=True, tests=_COND),
    Scenario("equal clusters 8 x 375", "clustered", 3000, kwargs={"cluster_size": 375},
             clusters=True, tests=_COND),
    # the within-cluster t reference (`within_clusters`): an effect inside clusters at K = 5
    Scenario("K = 5 clusters, planted within clusters c + 0.05 sign(r - a_k)", "clustered_within",
             3000, 0.05, kwargs={"cluster_size": 600}, clusters=True, tests=_COND),
    # few and unbalanced: Pareto(1.1) sizes with 6 and 10 clusters (unequal score variances)
    Scenario("Pareto(1.1) clusters, 6", "pareto", 3000, kwargs={"cluster_size": 500},
             clusters=True, tests=_COND),
    Scenario("Pareto(1.1) clusters, 10", "pareto", 3000, kwargs={"cluster_size": 300},
             clusters=True, tests=_COND),
    # a V-shape inside clusters at K = 5 (the omnibus test's within reference; monotone ~alpha)
    Scenario("K = 5 clusters, planted within clusters V-shape c + 0.1 (1 - 2|2 Phi(z) - 1|)",
             "clustered_vshape", 3000, 0.1, kwargs={"cluster_size": 600}, clusters=True,
             tests=_COND),
)

# `p_value="randomized"` (benchmarks/validity.py --issue22 --p-value randomized): the rows where the
# default p is conservative (few clusters, tied levels with no information) and beside them rows
# where it is not (10 and Pareto clusters, the exchangeable null) and the monotone test's power.
_RANDOMIZED = ("equal clusters 6 x 500", "equal clusters 10 x 300", "Pareto(1.1) clusters, 60",
               "tied 20/20/320/320/320, r = c", "tied 20/20/320/320/320, r = 1[c >= 0.6]",
               "exchangeable null, N = 2000", "power: c + 0.05 sign(r)")
RANDOMIZED_SCENARIOS = tuple(s._replace(tests=_COND) for s in ISSUE22_SCENARIOS
                             if s.name in _RANDOMIZED)
# their rows' keys in `ISSUE22_SCENARIOS` (`run(row_ids=...)`): the same datasets and sign flips as
# the default p's table, so the two differ only in the p-value
RANDOMIZED_ROW_IDS = tuple(i for i, s in enumerate(ISSUE22_SCENARIOS) if s.name in _RANDOMIZED)
# `reference="restudentised"` (--reference restudentised): the rows with at most 12 clusters, on
# the default table's datasets and sign flips
FEW_CLUSTER_ROW_IDS = tuple(i for i, s in enumerate(ISSUE22_SCENARIOS)
                            if s.name.startswith(("equal clusters ", "K = 5"))
                            and s.kwargs.get("cluster_size", 0) >= 250)
FEW_CLUSTER_SCENARIOS = tuple(ISSUE22_SCENARIOS[i] for i in FEW_CLUSTER_ROW_IDS)

# The CI version: the four nulls of the issue and its planted effect (one design compile each).
FAST_SCENARIOS = tuple(s for s in SCENARIOS if s.name != "exchangeable null" and s.effect != 0.03)


class Row(NamedTuple):
    """One scenario: rejections out of n_datasets and the 99% intervals of each test (-1 and
    (nan, nan): not run); warning: the conditional test's few-clusters warning, if any."""

    name: str
    n_datasets: int
    paper: int
    paper_ci: tuple[float, float]
    conditional: int
    conditional_ci: tuple[float, float]
    omnibus: int = -1
    omnibus_ci: tuple[float, float] = (float("nan"), float("nan"))
    warning: str = ""


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
    batch: int | None = None,
    power_datasets: int | None = None,
    on_row: Any = None,
    p_value: str = "conservative",
    row_ids: tuple[int, ...] | None = None,
    reference: str = "auto",
) -> list[Row]:
    """Runs every scenario; row i uses `fold_in(key, row_ids[i])` (default i) for the data and the
    tests.

    Rows with a planted effect use `power_datasets` datasets (default `n_datasets`); `on_row` is
    called with each finished row (progress); `p_value` is the conditional tests' p ("conservative"
    or "randomized"; the paper test has one p); `reference` the conditional tests' null ("auto",
    "fixed" or "restudentised", `restudentised`).

    `n` overrides every scenario's size (one shape for all rows: fewer compilations); `batch`
    splits the datasets into vmapped batches of that many (memory), same keys per dataset.
    """
    key = jax.random.key(key) if isinstance(key, int) else key
    rows = []
    nan = (float("nan"), float("nan"))
    for i, sc in enumerate(scenarios):
        sc = sc if n is None else sc._replace(n=n)
        k = jax.random.fold_in(key, i if row_ids is None else row_ids[i])
        n_sets = power_datasets if (sc.effect and power_datasets) else n_datasets
        d = simulation.design(
            jax.random.fold_in(k, 0), sc.design, sc.n, n_datasets=n_sets, effect=sc.effect,
            **sc.kwargs,
        )
        clusters = d.clusters if (sc.clusters or sc.design == "clustered") else None
        counts, warning = {}, ""
        for t in sc.tests:
            p_values = []
            size = batch or n_sets
            for lo in range(0, n_sets, size):
                part = slice(lo, lo + size)
                tk = jax.random.fold_in(jax.random.fold_in(k, 1 + TESTS.index(t)), lo)
                if t == "paper":
                    res = permutation_test_batch(
                        d.confidence[part], d.correct[part], d.routing[part], key=tk,
                        n_permutations=n_permutations,
                    )
                else:
                    res = conditional_test_batch(
                        d.confidence[part], d.correct[part], d.routing[part], key=tk,
                        clusters=None if clusters is None else clusters[part],
                        n_permutations=n_permutations, alpha=alpha, few_clusters="warn",
                        alternative="monotone" if t == "conditional" else "omnibus",
                        p_value=p_value, reference=reference,
                    )
                    warning = warning or res.warning
                p_values.append(np.asarray(res.p_value))
            counts[t] = int(np.sum(np.concatenate(p_values) <= alpha))
        cells = [(counts[t], _ci(counts[t], n_sets)) if t in counts else (-1, nan)
                 for t in TESTS]
        rows.append(Row(sc.name, n_sets, *cells[0], *cells[1], *cells[2], warning))
        if on_row is not None:
            on_row(rows[-1])
    return rows


def to_json(rows: list[Row], alpha: float = 0.05) -> list[dict[str, Any]]:
    """Rows as JSON-ready dicts: per test the rate, its 99% Clopper-Pearson interval, the count."""
    out = []
    for r in rows:
        d: dict[str, Any] = {"scenario": r.name, "n_datasets": r.n_datasets, "alpha": alpha}
        for t, k, ci in (("paper", r.paper, r.paper_ci),
                         ("conditional", r.conditional, r.conditional_ci),
                         ("omnibus", r.omnibus, r.omnibus_ci)):
            if k >= 0:
                d[t] = {"rejections": k, "rate": k / r.n_datasets, "ci99": list(ci)}
        if r.warning:
            d["warning"] = r.warning
        out.append(d)
    return out


def format_table(rows: list[Row], alpha: float = 0.05) -> str:
    """A markdown table of rejection rates with their 99% intervals."""
    omni = any(r.omnibus >= 0 for r in rows)
    out = [
        "| scenario | datasets | paper test: rate [99% CI] | recommended: rate [99% CI] |"
        + (" omnibus: rate [99% CI] |" if omni else ""),
        "| --- | --- | --- | --- |" + (" --- |" if omni else ""),
    ]
    def cell(r: Row, k: int, ci: tuple[float, float]) -> str:
        if k < 0:
            return "-"
        flag = "" if ci[0] <= alpha or "power" in r.name or "planted" in r.name else " (above alpha)"
        return f"{k / r.n_datasets:.3f} [{ci[0]:.3f}, {ci[1]:.3f}]{flag}"

    for r in rows:
        out.append(
            f"| {r.name} | {r.n_datasets} | {cell(r, r.paper, r.paper_ci)} | "
            f"{cell(r, r.conditional, r.conditional_ci)} |"
            + (f" {cell(r, r.omnibus, r.omnibus_ci)} |" if omni else "")
        )
    return "\n".join(out)


class PowerCheck(NamedTuple):
    """`minimum_detectable_gap`'s stated power at one planted gap against the rejection rate of the
    real test (its default reference, B sign flips) on independently planted datasets (99%
    intervals); alternative: the test's."""

    n_clusters: int
    gap: float
    stated: float
    stated_ci: tuple[float, float]
    measured: float
    measured_ci: tuple[float, float]
    n_datasets: int
    alternative: str = "monotone"


def power_check(
    key: Any, n_clusters: int, *, n: int = 3000, n_datasets: int = 200, n_permutations: int = 199,
    alpha: float = 0.05, alternative: str = "monotone",
) -> PowerCheck:
    """Brute force for `minimum_detectable_gap` on the "clustered" design with K equal clusters.

    The gap checked is the grid point whose stated power is nearest 0.5 (where a wrong power
    would show most), or the middle of the grid when the test cannot reject (K <= 5).
    """
    from routecal.stats.power import minimum_detectable_gap, plant_gap

    key = jax.random.key(key) if isinstance(key, int) else key
    d = simulation.design(jax.random.fold_in(key, 0), "clustered", n, cluster_size=n // n_clusters)
    c, y, cl = d.confidence[0], d.correct[0], d.clusters[0]
    m = minimum_detectable_gap(c, y, key=jax.random.fold_in(key, 1), clusters=cl, alpha=alpha,
                               n_datasets=n_datasets, alternative=alternative)
    i = int(np.argmin(np.abs(m.power - 0.5))) if m.power.max() > 0 else len(m.gaps) // 2
    gap = float(m.gaps[i])
    r, ys = plant_gap(c, y, gap, key=jax.random.fold_in(key, 2), n_datasets=n_datasets,
                      clusters=cl)
    res = conditional_test_batch(
        np.broadcast_to(c, ys.shape), ys, r, key=jax.random.fold_in(key, 3),
        clusters=np.broadcast_to(cl, ys.shape), n_permutations=n_permutations, alpha=alpha,
        few_clusters="warn", alternative=alternative,
    )
    hits = int(np.sum(res.p_value <= alpha))
    stated_hits = int(round(m.power[i] * n_datasets))
    return PowerCheck(int(len(np.unique(cl))), gap, float(m.power[i]), _ci(stated_hits, n_datasets),
                      hits / n_datasets, _ci(hits, n_datasets), n_datasets, alternative)
