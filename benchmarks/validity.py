"""Level and power of the paper test and the recommended conditional tests (issues 11 and 22).

    python benchmarks/validity.py                       # issue 11 table, 200 datasets, B = 199
    python benchmarks/validity.py --issue22 --n-datasets 1000 --json routecal/report/validity.json
    python benchmarks/validity.py --issue22 --kci --mdg --million --n-datasets 1000 \
        --json routecal/report/validity.json            # everything in RESULTS.md (issue 22)
    python benchmarks/validity.py --issue22 --p-value randomized --n-datasets 1000 \
        --power-datasets 200                            # the randomised p's rows (issue 22)
    python benchmarks/validity.py --issue22 --reference restudentised --n-datasets 1000 \
        --power-datasets 200                            # the re-studentised null, <= 12 clusters

Prints markdown tables (`routecal.stats.validity`): rejection rates at alpha = 0.05 with
Clopper-Pearson 99% intervals over the datasets of each design for `within_bin_permutation_test`
(paper), `conditional_calibration_test` (recommended, monotone) and its `alternative="omnibus"`.
`--json` writes the rows (and the command) for the report's verdicts (`report/validity_note.py`).
`--p-value randomized`: the conditional tests with `p_value="randomized"`; with `--issue22` only the
rows where that choice matters (`validity.RANDOMIZED_SCENARIOS`), on the default table's datasets.
`--reference restudentised`: the conditional tests' re-studentised null (`stats.restudentised`); with
`--issue22` only the rows with at most 12 clusters, on the default table's datasets.
Both tests with 2 to 12 clusters use the within-cluster t reference (`stats.within_clusters`,
"auto"; the omnibus test Bonferroni over its 4 columns).
`--kci`: the omnibus test beside KCI (causal-learn's `CIT(data, "kci")`; skipped with a message
when causal-learn is absent; `pip install -e .[bench]`) on the two non-monotone designs, power and
seconds per test. `--mdg`: `minimum_detectable_gap`'s stated power against the real test's
rejection rate at K = 5, 10 and 60 clusters (monotone) and K = 6 (omnibus, within). `--million`: one omnibus test at N = 1,000,000.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import numpy as np


def _kci(n_kci: int, n_datasets: int, seed: int, budget_s: float = float("inf"),
         designs: tuple[str, ...] = ("vshape", "signflip"), offset: int = 0) -> None:
    try:
        from causallearn.utils.cit import CIT
    except ImportError:
        print("KCI: skipped (causal-learn not installed; pip install causal-learn)")
        return
    import jax

    from routecal.stats import diagnostics, simulation

    print("\n| design (N = 2000) | omnibus power [99% CI] | KCI power [99% CI] | omnibus s/test "
          "| KCI s/test |\n| --- | --- | --- | --- | --- |")
    from routecal.stats.validity import _ci

    for name, effect in (("vshape", 0.1), ("signflip", 0.08)):
        if name not in designs:
            continue
        d = simulation.design(jax.random.key(seed + 100), name, 2000, n_datasets=n_datasets,
                              effect=effect)
        res = diagnostics.conditional_test_batch(d.confidence, d.correct, d.routing, key=seed,
                                                 n_permutations=999, alternative="omnibus")
        k_omni = int(np.sum(res.p_value <= 0.05))
        args = (d.confidence[0], d.correct[0], d.routing[0])
        diagnostics.conditional_calibration_test(*args, key=0, n_permutations=999,
                                                 alternative="omnibus")  # compile
        t0 = time.perf_counter()
        for i in range(3):
            diagnostics.conditional_calibration_test(
                d.confidence[i], d.correct[i], d.routing[i], key=i, n_permutations=999,
                alternative="omnibus")
        t_omni = (time.perf_counter() - t0) / 3
        hits, done, t0 = 0, 0, time.perf_counter()
        for i in range(offset, offset + n_kci):  # stops past `budget_s` (KCI is O(N^3))
            data = np.c_[d.correct[i], d.routing[i], d.confidence[i]]
            hits += CIT(data, "kci")(0, 1, [2]) <= 0.05
            done += 1
            if time.perf_counter() - t0 > budget_s:
                break
        n_kci = done
        t_kci = (time.perf_counter() - t0) / n_kci
        co, ck = _ci(k_omni, n_datasets), _ci(int(hits), n_kci)
        print(f"| {name} (effect {effect}) | {k_omni / n_datasets:.3f} [{co[0]:.3f}, {co[1]:.3f}] "
              f"({n_datasets} datasets, B = 999) | {hits / n_kci:.3f} [{ck[0]:.3f}, {ck[1]:.3f}] "
              f"({n_kci} datasets from {offset}) | {t_omni:.3f} | {t_kci:.1f} |", flush=True)


def _mdg(n_datasets: int, seed: int) -> None:
    from routecal.stats import validity

    print("\n| test | clusters K (N = 3000) | planted gap | stated power [99% CI] | measured rate "
          "of the test [99% CI] | datasets |\n| --- | --- | --- | --- | --- | --- |")
    for k, alternative in ((5, "monotone"), (10, "monotone"), (60, "monotone"), (6, "omnibus")):
        r = validity.power_check(seed + k, k, n_datasets=n_datasets, alternative=alternative)
        print(f"| {alternative} | {r.n_clusters} | {r.gap:.3f} | {r.stated:.3f} "
              f"[{r.stated_ci[0]:.3f}, "
              f"{r.stated_ci[1]:.3f}] | {r.measured:.3f} [{r.measured_ci[0]:.3f}, "
              f"{r.measured_ci[1]:.3f}] | {r.n_datasets} |", flush=True)


def _million(seed: int) -> None:
    import jax

    from routecal.stats import diagnostics, simulation

    n = 1_000_000
    d = simulation.design(jax.random.key(seed), "sign", n, effect=0.01)
    clusters = np.arange(n) // 100  # 10,000 sequences of 100 tokens
    for label, cl in (("10,000 clusters of 100", clusters),):
        t0 = time.perf_counter()
        res = diagnostics.conditional_calibration_test(
            d.confidence[0], d.correct[0], d.routing[0], key=seed, clusters=cl,
            n_permutations=999, alternative="omnibus")
        print(f"omnibus test, N = 1,000,000 ({label}), B = 999: statistic {res.statistic:.2f}, "
              f"p {res.p_value:.4f}, wall {time.perf_counter() - t0:.1f} s (incl. compile)",
              flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-datasets", type=int, default=200)
    ap.add_argument("--n-permutations", type=int, default=199)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--batch", type=int, default=250, help="datasets per vmapped batch")
    ap.add_argument("--power-datasets", type=int, default=None, help="datasets per power row")
    ap.add_argument("--issue22", action="store_true", help="the issue-22 rows instead of issue 11")
    ap.add_argument("--json", default=None, help="write the rows here (the report cites them)")
    ap.add_argument("--p-value", default="conservative", choices=("conservative", "randomized"),
                    help="the conditional tests' p-value (stats.cluster_inference.sign_flip_p)")
    ap.add_argument("--reference", default="auto", choices=("auto", "fixed", "restudentised"),
                    help="the conditional tests' null (stats.restudentised)")
    ap.add_argument("--kci", action="store_true")
    ap.add_argument("--kci-datasets", type=int, default=30)
    ap.add_argument("--kci-omnibus-datasets", type=int, default=200)
    ap.add_argument("--kci-budget-s", type=float, default=float("inf"), help="per design")
    ap.add_argument("--kci-designs", default="vshape,signflip")
    ap.add_argument("--kci-offset", type=int, default=0, help="first dataset KCI tests")
    ap.add_argument("--mdg", action="store_true")
    ap.add_argument("--mdg-datasets", type=int, default=200)
    ap.add_argument("--million", action="store_true")
    ap.add_argument("--skip-table", action="store_true")
    args = ap.parse_args()
    from routecal.stats import validity

    command = "python benchmarks/validity.py " + " ".join(sys.argv[1:])
    print(f"`{command}`; load average before: {os.getloadavg()}", flush=True)
    t0 = time.perf_counter()
    if not args.skip_table:
        scenarios = validity.ISSUE22_SCENARIOS if args.issue22 else validity.SCENARIOS
        row_ids = None
        if args.issue22 and args.p_value == "randomized":  # the default table's datasets and flips
            scenarios, row_ids = validity.RANDOMIZED_SCENARIOS, validity.RANDOMIZED_ROW_IDS
        if args.issue22 and args.reference == "restudentised":
            scenarios, row_ids = validity.FEW_CLUSTER_SCENARIOS, validity.FEW_CLUSTER_ROW_IDS
        rows = validity.run(args.seed, n_datasets=args.n_datasets,
                            n_permutations=args.n_permutations, scenarios=scenarios,
                            batch=args.batch, power_datasets=args.power_datasets,
                            p_value=args.p_value, row_ids=row_ids, reference=args.reference,
                            on_row=lambda r: print(f"done: {r} ({time.perf_counter() - t0:.0f} s)",
                                                   file=sys.stderr, flush=True))
        print(validity.format_table(rows), flush=True)
        for r in rows:
            if r.warning:
                print(f"{r.name}: {r.warning}")
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"command": command, "n_permutations": args.n_permutations,
                           "p_value": args.p_value, "reference": args.reference,
                           "rows": validity.to_json(rows)}, f, indent=1)
            print(f"wrote {args.json}")
        print(f"table wall {time.perf_counter() - t0:.0f} s", flush=True)
    if args.mdg:
        _mdg(args.mdg_datasets, args.seed)
    if args.million:
        _million(args.seed)
    if args.kci:
        _kci(args.kci_datasets, args.kci_omnibus_datasets, args.seed, args.kci_budget_s,
             tuple(args.kci_designs.split(",")), args.kci_offset)
    print(f"wall {time.perf_counter() - t0:.0f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
