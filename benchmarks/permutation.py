"""Within-bin permutation test and ECE: routecal vs plain numpy, on 1 and 2 host devices.

    python benchmarks/permutation.py                      # N = 10k, 100k; B = 10k (a few minutes)
    python benchmarks/permutation.py --n-permutations 1000 --sizes 10000   # quick
    python benchmarks/permutation.py --only conditional   # paper vs conditional test, N = 100k
    python benchmarks/permutation.py --only coin --sizes 100000 1000000   # vs R coin (issue 26)

Runs a worker subprocess with XLA_FLAGS=--xla_force_host_platform_device_count=2 that times, in one
process: the numpy loop (per-bin `rng.permutation` of the residuals, the direct way to write the
test), routecal on a 1-device mesh and on a 2-device mesh; a second fresh subprocess measures peak
resident memory (ru_maxrss) of a test at N = 1M; a third times top-label ECE on 1M x 10 classes,
numpy vs the jitted `calibration.ece_from_probs_jax` on device-resident arrays.
Wall-clock times (best of `--repeats`), plus process CPU time; the machine's load average is
printed because other jobs share the CPU.

`--only coin` compares with R's coin package (Hothorn et al. 2006, "A Lego system for conditional
inference", Am. Stat. 60(3)): `independence_test(res ~ r | bin, distribution = approximate(nresample
= B))`, the stratified (within-bin) permutation test an R user would pick, on residuals res =
correct - confidence, the routing feature r and the 15 width bins as strata. R runs in a subprocess
(`Rscript`) on data written to a temporary CSV; only `independence_test` is timed, inside R. coin is
a benchmark tool, not a routecal dependency: without `Rscript` or coin the comparison is skipped with
a message (Debian: `apt-get install r-base-core r-cran-coin`). coin needs >= 2 examples per bin.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _data(n: int, seed: int = 0):
    import numpy as np

    rng = np.random.default_rng(seed)
    c = rng.beta(5, 2, n)
    y = (rng.random(n) < c).astype(np.float64)
    r = rng.normal(size=n)
    return c, y, r


def numpy_permutation_test(c, y, r, n_perm, n_bins=15, n_groups=3, seed=0):
    """The plain numpy loop: per permutation, per bin, rng.permutation of the bin's residuals."""
    import numpy as np

    rng = np.random.default_rng(seed)
    b = np.clip(np.ceil(c * n_bins).astype(int) - 1, 0, n_bins - 1)
    res = y - c
    n = len(c)
    bins, stat = [], 0.0
    for k in range(n_bins):
        idx = np.flatnonzero(b == k)
        if len(idx) < n_groups:
            continue
        parts = np.array_split(idx[np.argsort(r[idx], kind="stable")], n_groups)
        kt, kb = len(parts[-1]), len(parts[0])
        stat += len(idx) / n * abs(res[parts[-1]].mean() - res[parts[0]].mean())
        bins.append((res[idx], kt, kb, len(idx) / n))
    null = np.empty(n_perm)
    for t in range(n_perm):
        s = 0.0
        for rb, kt, kb, w in bins:
            p = rng.permutation(rb)
            s += w * abs(p[-kt:].mean() - p[:kb].mean())
        null[t] = s
    p_value = (1 + np.sum(null >= stat - 1e-12)) / (1 + n_perm)
    return stat, p_value, null


def _timed(fn, repeats):
    best_wall, best_cpu, out = float("inf"), float("inf"), None
    for _ in range(repeats):
        w0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        best_wall = min(best_wall, time.perf_counter() - w0)
        best_cpu = min(best_cpu, time.process_time() - c0)
    return best_wall, best_cpu, out


def _thread_cpu():
    """CPU seconds per live thread of this process (psutil), to show how work splits over threads."""
    import psutil

    return {t.id: t.user_time + t.system_time for t in psutil.Process().threads()}


def worker_speed(sizes, n_perm, repeats):
    import jax

    from routecal import parallel
    from routecal.stats import diagnostics

    assert len(jax.devices()) >= 2, jax.devices()
    rows = []
    for n in sizes:
        c, y, r = _data(n)
        np_wall, np_cpu, (_, p_np, _) = _timed(
            lambda c=c, y=y, r=r: numpy_permutation_test(c, y, r, n_perm), 1
        )
        row = dict(n=n, B=n_perm, numpy_wall=np_wall, numpy_cpu=np_cpu, p_numpy=p_np)
        for n_dev in (1, 2):
            mesh = parallel.make_mesh(n_dev)

            def run(c=c, y=y, r=r, mesh=mesh):
                return diagnostics.within_bin_permutation_test(
                    c, y, r, key=jax.random.key(0), n_permutations=n_perm, mesh=mesh
                )

            run()  # compile
            before = _thread_cpu()
            wall, cpu, res = _timed(run, repeats)
            after = _thread_cpu()
            busy = sorted((after[t] - before.get(t, 0.0) for t in after), reverse=True)
            row[f"routecal_{n_dev}dev_wall"] = wall
            row[f"routecal_{n_dev}dev_cpu"] = cpu
            row[f"routecal_{n_dev}dev_threads"] = [round(b / repeats, 2) for b in busy[:3]]
            row[f"p_{n_dev}dev"] = res.p_value
        rows.append(row)
    print(json.dumps(rows))


def worker_conditional(n, n_perm, repeats):
    """Paper test vs the recommended conditional test, same data, 1 and 2 devices (wall, CPU s)."""
    import jax

    from routecal import parallel
    from routecal.stats import diagnostics

    c, y, r = _data(n)
    row = dict(n=n, B=n_perm)
    tests = {
        "paper": diagnostics.within_bin_permutation_test,
        "conditional": diagnostics.conditional_calibration_test,
    }
    for name, test in tests.items():
        for n_dev in (1, 2):
            mesh = parallel.make_mesh(n_dev)

            def run(test=test, mesh=mesh):
                return test(c, y, r, key=jax.random.key(0), n_permutations=n_perm, mesh=mesh)

            run()  # compile
            wall, cpu, res = _timed(run, repeats)
            row[f"{name}_{n_dev}dev"] = (wall, cpu, res.p_value)
    print(json.dumps(row))


def worker_memory(n, n_perm):
    import resource

    import jax

    from routecal.stats import diagnostics

    c, y, r = _data(n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    t0 = time.perf_counter()
    res = diagnostics.within_bin_permutation_test(
        c, y, r, key=jax.random.key(0), n_permutations=n_perm
    )
    wall = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps(dict(n=n, B=n_perm, peak_mb=peak, before_mb=base, wall=wall,
                          p=res.p_value, devices=len(jax.devices()))))


def numpy_ece(probs, labels, n_bins=15):
    import numpy as np

    conf = probs.max(axis=1)
    correct = probs.argmax(axis=1) == labels
    b = np.clip(np.ceil(conf * n_bins).astype(np.int64) - 1, 0, n_bins - 1)
    gap = np.bincount(b, weights=correct - conf, minlength=n_bins)
    return float(np.abs(gap).sum() / len(conf))


def worker_ece(n, n_classes, repeats):
    import jax
    import jax.numpy as jnp
    import numpy as np

    from routecal.stats import calibration

    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, n_classes)).astype(np.float32) * 2
    probs = np.exp(logits)
    probs /= probs.sum(1, keepdims=True)
    labels = rng.integers(0, n_classes, n).astype(np.int32)
    np_wall, _, e_np = _timed(lambda: numpy_ece(probs, labels), repeats)
    pj, lj = jax.device_put(jnp.asarray(probs)), jax.device_put(jnp.asarray(labels))
    f = calibration.ece_from_probs_jax
    f(pj, lj).block_until_ready()
    jx_wall, _, e_jx = _timed(lambda: f(pj, lj).block_until_ready(), repeats)
    pub_wall, _, _ = _timed(lambda: calibration.ece_from_probs(probs, labels), 1)
    print(json.dumps(dict(n=n, classes=n_classes, numpy_wall=np_wall, jax_wall=jx_wall,
                          public_ece_from_probs_wall=pub_wall, ece_numpy=e_np,
                          ece_jax=float(e_jx))))


_COIN_R = r"""
suppressMessages(library(coin))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[1]); d$bin <- factor(d$bin)
B <- as.integer(args[2]); repeats <- as.integer(args[3])
best <- Inf
for (i in seq_len(repeats)) {
  set.seed(i)
  t0 <- proc.time()[["elapsed"]]
  it <- independence_test(res ~ r | bin, data = d, distribution = approximate(nresample = B))
  best <- min(best, proc.time()[["elapsed"]] - t0)
}
cat(sprintf("COIN %.6f %.8f %s\n", best, pvalue(it), packageVersion("coin")))
"""


def coin_missing() -> str:
    """'' when `Rscript` and R's coin package are installed, else why the comparison is skipped."""
    import shutil

    if shutil.which("Rscript") is None:
        return "Rscript not found (Debian: apt-get install r-base-core r-cran-coin)"
    out = subprocess.run(["Rscript", "-e", "suppressMessages(library(coin))"],
                         capture_output=True, text=True)
    if out.returncode != 0:
        return f"R package coin not installed ({out.stderr.strip().splitlines()[-1:]})"
    return ""


def time_coin(n, n_perm, repeats, n_bins=15):
    """coin's stratified permutation test on `_data(n)`: (best wall s inside R, p, coin version)."""
    import tempfile

    import numpy as np

    c, y, r = _data(n)
    b = np.clip(np.ceil(c * n_bins).astype(int) - 1, 0, n_bins - 1)
    with tempfile.TemporaryDirectory() as tmp:
        csv, script = pathlib.Path(tmp) / "data.csv", pathlib.Path(tmp) / "coin.R"
        np.savetxt(csv, np.c_[y - c, r, b], delimiter=",", header="res,r,bin", comments="",
                   fmt=["%.17g", "%.17g", "%d"])
        script.write_text(_COIN_R)
        out = subprocess.run(["Rscript", str(script), str(csv), str(n_perm), str(repeats)],
                             capture_output=True, text=True, check=True)
    line = next(x for x in out.stdout.splitlines() if x.startswith("COIN "))
    _, wall, p, version = line.split()
    return float(wall), float(p), version


def worker_coin_side(sizes, n_perm, repeats):
    """routecal's paper and recommended tests on the coin data, 1 and 2 devices (best wall s, p)."""
    import jax

    from routecal import parallel
    from routecal.stats import diagnostics

    tests = {
        "paper": diagnostics.within_bin_permutation_test,
        "recommended": diagnostics.conditional_calibration_test,
    }
    rows = []
    for n in sizes:
        c, y, r = _data(n)
        row = dict(n=n, B=n_perm)
        for name, test in tests.items():
            for n_dev in (1, 2):
                mesh = parallel.make_mesh(n_dev)

                def run(test=test, mesh=mesh, c=c, y=y, r=r):
                    return test(c, y, r, key=jax.random.key(0), n_permutations=n_perm, mesh=mesh)

                run()  # compile
                wall, cpu, res = _timed(run, repeats)
                row[f"{name}_{n_dev}dev"] = (wall, cpu, res.p_value)
        rows.append(row)
    print(json.dumps(rows))


def coin_comparison(sizes, n_perm, repeats, coin_repeats):
    """Prints coin vs routecal's paper and recommended tests (markdown table) or why it is skipped."""
    missing = coin_missing()
    if missing:
        print(f"\nR coin comparison skipped: {missing}")
        return
    rows = _spawn(["--worker", "coin", "--sizes", *map(str, sizes), "--n-permutations",
                   str(n_perm), "--repeats", str(repeats)], 2)
    print(f"\nR coin vs routecal, B = {n_perm:,}: best wall s (coin: of {coin_repeats}, inside R; "
          f"routecal: of {repeats}, 1 device / 2 devices); ratio = coin / routecal (best)")
    print("| N | R coin | paper test 1 dev / 2 dev | coin / paper | recommended 1 dev / 2 dev | "
          "coin / recommended | p: coin, paper, recommended |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        load = os.getloadavg()
        wall, p_coin, version = time_coin(row["n"], n_perm, coin_repeats)
        pap = min(row["paper_1dev"][0], row["paper_2dev"][0])
        rec = min(row["recommended_1dev"][0], row["recommended_2dev"][0])
        print(f"| {row['n']:,} | {wall:.2f} | {row['paper_1dev'][0]:.2f} / "
              f"{row['paper_2dev'][0]:.2f} | {wall / pap:.1f}x | "
              f"{row['recommended_1dev'][0]:.3f} / {row['recommended_2dev'][0]:.3f} | "
              f"{wall / rec:.1f}x | {p_coin:.4f}, {row['paper_1dev'][2]:.4f}, "
              f"{row['recommended_1dev'][2]:.4f} |")
        print(f"  (coin {version}; load average before coin: {load[0]:.2f})")


def _spawn(args, n_devices):
    env = dict(os.environ)
    env["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={n_devices}"
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = f"{ROOT}{os.pathsep}{env.get('PYTHONPATH', '')}"
    out = subprocess.run(
        [sys.executable, __file__, *args], env=env, capture_output=True, text=True, check=True
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000])
    ap.add_argument("--n-permutations", type=int, default=10_000)
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--memory-n", type=int, default=1_000_000)
    ap.add_argument("--memory-permutations", type=int, default=1_000)
    ap.add_argument("--coin-repeats", type=int, default=1, help="coin runs (best is reported)")
    ap.add_argument("--worker", choices=["speed", "memory", "ece", "conditional", "coin"],
                    default=None)
    ap.add_argument("--only", choices=["all", "conditional", "coin"], default="all",
                    help="'conditional': only the paper-vs-conditional timing at the largest size; "
                         "'coin': only the comparison with R's coin at every size")
    args = ap.parse_args()
    if args.worker == "coin":
        return worker_coin_side(args.sizes, args.n_permutations, args.repeats)
    if args.worker == "speed":
        return worker_speed(args.sizes, args.n_permutations, args.repeats)
    if args.worker == "memory":
        return worker_memory(args.memory_n, args.memory_permutations)
    if args.worker == "ece":
        return worker_ece(1_000_000, 10, 5)
    if args.worker == "conditional":
        return worker_conditional(max(args.sizes), args.n_permutations, args.repeats)

    print(f"load average before: {os.getloadavg()}")
    if args.only == "coin":
        coin_comparison(args.sizes, args.n_permutations, args.repeats, args.coin_repeats)
        print(f"load average after: {os.getloadavg()}")
        return
    cond = _spawn(["--worker", "conditional", "--sizes", str(max(args.sizes)), "--n-permutations",
                   str(args.n_permutations), "--repeats", str(args.repeats)], 2)
    print(f"\npaper test vs conditional test at N = {cond['n']:,}, B = {cond['B']:,}: wall s (CPU s)")
    print("| test | 1 device | 2 devices | 1 dev / 2 dev | p (1 dev, 2 dev) |")
    print("|---|---|---|---|---|")
    for name in ("paper", "conditional"):
        (w1, c1, p1), (w2, c2, p2) = cond[f"{name}_1dev"], cond[f"{name}_2dev"]
        print(f"| {name} | {w1:.2f} ({c1:.2f}) | {w2:.2f} ({c2:.2f}) | {w1 / w2:.2f}x | "
              f"{p1:.4f}, {p2:.4f} |")
    print(f"conditional / paper (1 dev): "
          f"{cond['conditional_1dev'][0] / cond['paper_1dev'][0]:.2f}x wall")
    if args.only == "conditional":
        print(f"load average after: {os.getloadavg()}")
        return
    rows = _spawn(["--worker", "speed", "--sizes", *map(str, args.sizes), "--n-permutations",
                   str(args.n_permutations), "--repeats", str(args.repeats)], 2)
    print("\nwithin-bin permutation test (15 bins x tertiles), wall seconds (CPU seconds)")
    print("| N | B | numpy loop | routecal 1 dev | routecal 2 dev | numpy/1dev | 1dev/2dev |")
    print("|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['n']:,} | {r['B']:,} | {r['numpy_wall']:.2f} ({r['numpy_cpu']:.2f}) | "
            f"{r['routecal_1dev_wall']:.2f} ({r['routecal_1dev_cpu']:.2f}) | "
            f"{r['routecal_2dev_wall']:.2f} ({r['routecal_2dev_cpu']:.2f}) | "
            f"{r['numpy_wall'] / r['routecal_1dev_wall']:.2f}x | "
            f"{r['routecal_1dev_wall'] / r['routecal_2dev_wall']:.2f}x |"
        )
        print(f"  p-values: numpy {r['p_numpy']:.4f}, routecal {r['p_1dev']:.4f} (1 dev) "
              f"{r['p_2dev']:.4f} (2 dev)")
        print(f"  CPU seconds per run on the busiest threads: 1 dev {r['routecal_1dev_threads']}, "
              f"2 dev {r['routecal_2dev_threads']}")
    mem = _spawn(["--worker", "memory", "--memory-n", str(args.memory_n),
                  "--memory-permutations", str(args.memory_permutations)], 2)
    print(f"\npeak RSS at N = {mem['n']:,}, B = {mem['B']:,} on {mem['devices']} devices: "
          f"{mem['peak_mb']:.0f} MB (process, incl. JAX runtime; {mem['before_mb']:.0f} MB before "
          f"the test); wall {mem['wall']:.1f} s")
    ece = _spawn(["--worker", "ece"], 1)
    print(f"\nECE on {ece['n']:,} x {ece['classes']}: numpy {ece['numpy_wall'] * 1e3:.1f} ms, "
          f"jitted on-device {ece['jax_wall'] * 1e3:.2f} ms -> "
          f"{ece['numpy_wall'] / ece['jax_wall']:.1f}x; public ece_from_probs (host checks + "
          f"transfer) {ece['public_ece_from_probs_wall'] * 1e3:.0f} ms; values "
          f"{ece['ece_numpy']:.6f} vs {ece['ece_jax']:.6f}")
    coin_comparison(args.sizes, args.n_permutations, args.repeats, args.coin_repeats)
    print(f"load average after: {os.getloadavg()}")


if __name__ == "__main__":
    main()
