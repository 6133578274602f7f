"""The diagnostics of every unit: every registered test on every (domain, model, seed, routing
feature) cell and each test's detectable gap per (domain, model, seed), adjusted and summarised.

Shapes: N rows of one cell (examples or tokens), B permutations.

A unit says what one cell's rows are (`Rows`): `example_unit.cell_rows` pools the calib split and
the domains' splits of one run (domain "all", independent rows), `token_unit.cell_rows` thins one
domain's tokens to whole clusters (documents or rows). `tasks` gives the stages, the same for
every unit: `diag:<domain>:<arch>:<seed>:<feature>` (`test_cell`: every configured test of
`study.registry`, permutation nulls to `W/stages/nulls/<stage>.npz`) and, for the plan's power
cells, `power:<domain>:<arch>:<seed>` (`power_cell`: each test's minimum detectable gap and power
curve; it does not depend on the routing feature). PRNG keys: cell i of `Plan.cells()` ->
`fold_in(key, i)`, then feature j -> `fold_in(., j)`, then test t (its place in `registry.TESTS`)
-> `fold_in(., t)`; the power cell -> `fold_in(cell key, POWER_STREAM)`, then test t.
`results` gathers the stored cells for results.json: one row per (test, cell, feature) with Holm
and BH p-values per (test, domain) family, the rejection summary per (test, domain, arch,
feature) with seed bands for the unsigned tests (a signed Z carries its comparison in its
p-value), the nulls of each test's `n_null_figures` smallest p-values (the report's figure), the
cluster ranges per domain; `power_rows` the detectable gaps. `run` computes the same stages in
memory (`routecal diagnose`).
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np

from routecal import parallel
from routecal.files import workdir as workdir_io
from routecal.stats import multiple_testing, sequences
from routecal.study import registry

CellKey = tuple[str, str, int]  # (domain, arch, seed)
POWER_STREAM = 10_000  # the power cell's key: fold_in(cell key, POWER_STREAM)


@dataclasses.dataclass(frozen=True)
class Rows:
    """One (domain, arch, seed) cell's rows: confidence [N], correct [N], routing features
    {name: [N]}, cluster ids [N] of `cluster_unit` (None: independent rows) and `extras`
    recorded with each of its test rows (e.g. the token unit's n_sequences)."""

    confidence: np.ndarray
    correct: np.ndarray
    features: Mapping[str, np.ndarray]
    clusters: np.ndarray | None = None
    cluster_unit: str | None = None
    extras: Mapping[str, Any] = dataclasses.field(default_factory=dict)


def null_path(workdir: pathlib.Path, stage: str) -> pathlib.Path:
    """Where a diagnostics stage keeps its permutation nulls."""
    return workdir / "stages" / "nulls" / (stage.replace(":", "_") + ".npz")


def test_cell(rows: Rows, feature: str, *, key: jax.Array, s: registry.TestSettings,
              nulls: pathlib.Path | None = None) -> dict[str, Any]:
    """The configured tests on one cell and feature (`registry.run_cell`): {n, extras, cluster
    unit and sizes, tests: {test: numbers}}; the nulls [B] go to `nulls` (npz, one array per
    test) or, without it, stay in their test's numbers."""
    if feature not in rows.features:
        raise ValueError(f"diagnostics.features: {feature!r} not available (have "
                         f"{sorted(rows.features)})")
    res = registry.run_cell(rows.confidence, rows.correct, rows.features[feature], rows.clusters,
                            key=key, s=s)
    out: dict[str, Any] = {"n": int(len(rows.confidence)), **rows.extras}
    if rows.clusters is not None:
        out |= {"cluster_unit": rows.cluster_unit, **sequences.cluster_sizes(rows.clusters)}
    if nulls is not None:
        arrays = {test: r.pop("null") for test, r in res.items() if "null" in r}
        # atomic, with a unique temp name (a study worker may write the same cell); multi-host:
        # process 0 writes (read only after the stage's own write_json barrier)
        if arrays and parallel.is_primary():
            with workdir_io.atomic_path(nulls) as tmp, open(tmp, "wb") as fh:
                np.savez_compressed(fh, **arrays)
    return {**out, "tests": res}


def power_cell(rows: Rows, *, key: jax.Array, s: registry.TestSettings) -> dict[str, Any]:
    """Each configured test's minimum detectable gap and power curve on one cell's rows, with its
    clusters (`registry.power`)."""
    return {"power": registry.power(rows.confidence, rows.correct, rows.clusters, key=key, s=s)}


def _name(kind: str, cell: CellKey, *feature: str) -> str:
    return ":".join([kind, *map(str, cell), *feature])


def tasks(cells: Sequence[CellKey], features: Sequence[str], power_cells: Sequence[CellKey],
          rows_of: Callable[[CellKey], Rows], s: registry.TestSettings,
          workdir: pathlib.Path | None) -> list[tuple[str, Callable[[], Any]]]:
    """The diagnostics stages (module docstring), (name, thunk) in order: each cell's features,
    then its power stage when it is one of `power_cells`. `rows_of(cell)` builds a cell's rows
    (the last two are cached); `workdir` None keeps the nulls in the stages' output."""
    key, rows = jax.random.key(s.seed), functools.lru_cache(maxsize=2)(rows_of)
    out: list[tuple[str, Callable[[], Any]]] = []
    for i, c in enumerate(cells):
        ck = jax.random.fold_in(key, i)
        for j, f in enumerate(features):
            name = _name("diag", c, f)
            out.append((name, functools.partial(
                lambda c, f, k, name: test_cell(rows(c), f, key=k, s=s, nulls=None if workdir
                                                is None else null_path(workdir, name)),
                c, f, jax.random.fold_in(ck, j), name)))
        if c in power_cells:
            out.append((_name("power", c), functools.partial(
                lambda c, k: power_cell(rows(c), key=k, s=s), c,
                jax.random.fold_in(ck, POWER_STREAM))))
    return out


def results(cells: Sequence[CellKey], features: Sequence[str],
            load: Callable[[str], Mapping[str, Any]], s: registry.TestSettings,
            workdir: pathlib.Path | None) -> dict[str, Any]:
    """results.json's diagnostics from the stored `diag:` stages (`load(name)`; module
    docstring): {tests, summary, alpha, n_permutations, n_bins, n_groups, labels, families,
    cluster_unit, clusters}."""
    rows = []
    for c in cells:
        for f in features:
            name = _name("diag", c, f)
            cell = load(name)
            head = {k: v for k, v in cell.items() if k not in ("tests", "seconds")}
            for test, r in cell["tests"].items():
                rows.append({"test": test, "domain": c[0], "arch": c[1], "seed": c[2],
                             "feature": f, **head, **r, "_stage": name})
    summary = adjust(rows, s.alpha)
    for test in s.tests:
        mine = sorted((r for r in rows if r["test"] == test), key=lambda r: r["p_value"])
        for r in mine[: s.n_null_figures]:
            path = None if workdir is None else null_path(workdir, r["_stage"])
            if "null" not in r and path is not None and path.exists():
                with np.load(path) as z:
                    if test in z.files:
                        r["null"] = z[test].tolist()
            r["_shown"] = True
    for r in rows:
        r.pop("_stage")
        if not r.pop("_shown", False):
            r.pop("null", None)
    return {"tests": rows, "summary": summary, "alpha": s.alpha,
            "n_permutations": s.n_permutations, "n_bins": s.n_bins, "n_groups": s.n_groups,
            "labels": {k: registry.BY_NAME[k].label for k in s.tests}, "families": "test x domain",
            "cluster_unit": next((r["cluster_unit"] for r in rows if "cluster_unit" in r), None),
            "clusters": cluster_summary(rows)}


def adjust(rows: list[dict[str, Any]], alpha: float) -> list[dict[str, Any]]:
    """Holm and BH p-values per (test, domain) family (`stats.multiple_testing.adjust_rows`);
    the rejection summary per (test, domain, arch, feature), with seed bands of the statistic
    against its null's mean for the unsigned tests (a signed Z's p-value carries the comparison)."""
    return multiple_testing.adjust_rows(
        rows, alpha, ("test", "domain"), ("test", "domain", "arch", "feature"),
        banded=lambda ts: not registry.BY_NAME[ts[0]["test"]].signed
        and all("null_mean" in t for t in ts))


def cluster_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per domain with clusters: the cluster unit and [min, max] over its cells of the tokens,
    the clusters and their effective number."""
    out: dict[str, dict[str, Any]] = {}
    for d in dict.fromkeys(r["domain"] for r in rows if "n_clusters" in r):
        mine = [r for r in rows if r["domain"] == d]
        out[d] = {"cluster_unit": mine[0]["cluster_unit"]} | {
            k: [min(r[n] for r in mine), max(r[n] for r in mine)]
            for k, n in (("n_tokens", "n"), ("n_clusters", "n_clusters"),
                         ("n_eff_clusters", "n_eff_clusters"))}
    return out


def power_rows(cells: Sequence[CellKey], load: Callable[[str], Mapping[str, Any]]
               ) -> list[dict[str, Any]]:
    """One row per (test, domain, arch, seed) of the stored `power:` stages: mdg, power curve."""
    return [{"test": test, "domain": c[0], "arch": c[1], "seed": c[2], **p}
            for c in cells for test, p in load(_name("power", c))["power"].items()]


def run(cells: Sequence[CellKey], features: Sequence[str], power_cells: Sequence[CellKey],
        rows_of: Callable[[CellKey], Rows], s: registry.TestSettings) -> dict[str, Any]:
    """The same stages computed in memory (no workdir): {"diagnostics", "power"}."""
    stored = {name: fn() for name, fn in tasks(cells, features, power_cells, rows_of, s, None)}
    return {"diagnostics": results(cells, features, stored.__getitem__, s, None),
            "power": power_rows(power_cells, stored.__getitem__)}
