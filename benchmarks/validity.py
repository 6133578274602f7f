"""Level and power of the paper test and the recommended conditional test on the issue-11 nulls.

    python benchmarks/validity.py                       # 200 datasets per row, B = 199 (minutes)
    python benchmarks/validity.py --n-datasets 400      # tighter intervals

Prints a markdown table (`routecal.stats.validity`): rejection rates at alpha = 0.05 with
Clopper-Pearson 99% intervals over the null datasets of each design, and the power on planted
effects, for `within_bin_permutation_test` (paper) and `conditional_calibration_test`
(recommended; with the sequence ids in the clustered design).
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--n-datasets", type=int, default=200)
    ap.add_argument("--n-permutations", type=int, default=199)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    from routecal.stats import validity

    print(f"load average before: {os.getloadavg()}")
    t0 = time.perf_counter()
    rows = validity.run(args.seed, n_datasets=args.n_datasets, n_permutations=args.n_permutations)
    print(validity.format_table(rows))
    print(f"wall {time.perf_counter() - t0:.0f} s; load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
