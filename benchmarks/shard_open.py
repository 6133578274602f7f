"""Time to open a token-shard directory: index.json plus every column file's header checked.

    PYTHONPATH=$PWD python benchmarks/shard_open.py

Writes 200 shards x 12 float32 columns (2,000,000 rows) to a temporary directory, then opens it
five times with `routecal.files.shards.ShardedColumns` and prints the median (results in
benchmarks/RESULTS.md).
"""

import pathlib
import tempfile
import time

import numpy as np

from routecal.files import shards


def main() -> None:
    with tempfile.TemporaryDirectory() as d:
        n, rows, block = 2_000_000, 10_000, 100_000
        path = pathlib.Path(d) / "s"
        w = shards.ShardWriter(path, shard_rows=rows)
        rng = np.random.default_rng(0)
        for _ in range(0, n, block):
            w.append({f"c{j}": rng.random(block).astype(np.float32) for j in range(12)})
        w.close()
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            shards.ShardedColumns(path)
            times.append(time.perf_counter() - t0)
        print(f"open {n // rows} shards x 12 columns ({n} rows): median "
              f"{np.median(times) * 1e3:.1f} ms over 5")


if __name__ == "__main__":
    main()
