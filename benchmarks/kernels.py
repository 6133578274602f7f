"""Benchmark: routecal's leave-one-out bandwidth sweep vs numpy float64 and statsmodels.

    python benchmarks/kernels.py                      # N = 2000 comparison + 100k x 32 sweep
    python benchmarks/kernels.py --n-large 0          # skip the large sweep
    python benchmarks/kernels.py --skip-statsmodels   # skip statsmodels (takes minutes)

One process, float32 routecal on one device and on a 1-D mesh over all local CPU devices
(`--xla_force_host_platform_device_count=<cores>`), against
  * a blockwise numpy float64 implementation of the same LOO estimator (same stabilisation), and
  * statsmodels `KernelReg(reg_type="lc", bw="cv_ls")`: the whole least-squares CV bandwidth
    search a user would otherwise run (its objective evaluations are counted, so a per-bandwidth
    ratio is reported too).
Also printed: the "ceiling", the throughput of the simplest fused exp-sum XLA can run on this
machine right now, so numbers taken on a shared (busy) machine can be read against it.
"""

from __future__ import annotations

import argparse
import os
import resource
import threading
import time
import warnings

N_CORES = os.cpu_count() or 1
os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={N_CORES}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from routecal import kernels  # noqa: E402
from routecal.parallel import make_mesh  # noqa: E402


def simulate(n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(confidence, auxiliary) features [n, 2] and 0/1 correctness depending on both."""
    rng = np.random.default_rng(seed)
    c = rng.beta(5, 1.5, n)
    v = rng.gamma(2.0, 1.0, n)
    p = np.clip(c + 0.1 * (v - 2.0), 0.01, 0.99)
    return np.c_[c, v], (rng.random(n) < p).astype(np.float64)


def best_of(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return min(times)


def numpy_loo_nll(x: np.ndarray, y: np.ndarray, grid: np.ndarray, block: int = 256) -> np.ndarray:
    """Blockwise float64 LOO CV-NLL, the same estimator (row-min shift, self excluded, clip)."""
    n = len(x)
    out = np.empty(len(grid))
    for k, h in enumerate(grid):
        z = x / (np.sqrt(2.0) * h)
        p = np.empty(n)
        for s in range(0, n, block):
            zb = z[s : s + block]
            d = (zb[:, :1] - z[:, 0][None, :]) ** 2
            for j in range(1, z.shape[1]):
                d += (zb[:, j : j + 1] - z[:, j][None, :]) ** 2
            rows = np.arange(len(zb))
            d[rows, s + rows] = np.inf
            w = np.exp(d.min(axis=1, keepdims=True) - d)
            p[s : s + block] = w @ y / w.sum(axis=1)
        p = np.clip(p, 1e-6, 1 - 1e-6)
        out[k] = -np.mean(y * np.log(p) + (1 - y) * np.log1p(-p))
    return out


def exp_ceiling(n: int = 4096) -> float:
    """Kernel evaluations/s of the simplest fused exp-sum (one reduction) on this machine now."""
    a = jnp.asarray(np.random.default_rng(0).random(n, dtype=np.float32))
    f = jax.jit(lambda a: jnp.exp(-((a[:, None] - a[None, :]) ** 2)).sum(1))
    f(a).block_until_ready()
    return n * n / best_of(lambda: f(a).block_until_ready(), 5)


class PeakRSS:
    """Samples this process's resident memory every 50 ms (peak over the `with` block)."""

    def __enter__(self):
        import psutil

        self._proc = psutil.Process()
        self.peak = self._proc.memory_info().rss
        self.start = self.peak
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()
        return self

    def _run(self):
        while not self._stop.is_set():
            self.peak = max(self.peak, self._proc.memory_info().rss)
            time.sleep(0.05)

    def __exit__(self, *exc):
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, self._proc.memory_info().rss)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--n-large", type=int, default=100_000)
    parser.add_argument("--n-bandwidths", type=int, default=32)
    parser.add_argument("--skip-statsmodels", action="store_true")
    args = parser.parse_args()
    k = args.n_bandwidths
    multiples = np.geomspace(1 / 8, 8, k)
    mesh = make_mesh() if len(jax.devices()) > 1 else None
    print(f"devices: {len(jax.devices())} x {jax.devices()[0].platform}, cores: {N_CORES}")
    ceiling = exp_ceiling()
    print(f"ceiling (simplest fused exp-sum right now): {ceiling:.3g} evals/s")

    # ---- N = 2k: routecal vs numpy vs statsmodels ----
    n = args.n
    x, y = simulate(n)
    grid = kernels.scott_multiples(x, multiples)
    evals = k * n * (n - 1)
    t0 = time.perf_counter()
    rc = kernels.loo_nll(x, y, grid, mesh=mesh)
    compile_s = time.perf_counter() - t0
    t_rc = best_of(lambda: kernels.loo_nll(x, y, grid, mesh=mesh), 5)
    t_rc1 = best_of(lambda: kernels.loo_nll(x, y, grid), 3)
    print(f"\nN={n}, {k} bandwidths, D=2 ({evals:.3g} kernel evaluations per sweep)")
    print(
        f"routecal  {len(jax.devices())} devices: {t_rc:8.3f} s  {evals / t_rc:.3g} evals/s "
        f"(first call incl. compile {compile_s:.2f} s)"
    )
    print(f"routecal  1 device : {t_rc1:8.3f} s  {evals / t_rc1:.3g} evals/s")
    t_np = best_of(lambda: numpy_loo_nll(x, y, grid), 1)
    ref = numpy_loo_nll(x, y, grid[:2])
    err = np.max(np.abs(rc[:2] - ref))
    print(
        f"numpy f64 blockwise: {t_np:8.3f} s  {evals / t_np:.3g} evals/s  "
        f"-> routecal is {t_np / t_rc:.1f}x faster (max |CV-NLL diff| {err:.1e})"
    )

    if not args.skip_statsmodels:
        from statsmodels.nonparametric.kernel_regression import KernelReg

        count = {"n": 0}
        original = KernelReg.cv_loo

        def counted(self, bw, func):
            count["n"] += 1
            return original(self, bw, func)

        KernelReg.cv_loo = counted
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            t = time.perf_counter()
            kr = KernelReg(y, x, var_type="cc", reg_type="lc", bw="cv_ls")
            t_sm = time.perf_counter() - t
        KernelReg.cv_loo = original
        per_sm = t_sm / count["n"]
        per_rc = t_rc / k
        print(
            f"statsmodels KernelReg(lc, cv_ls): {t_sm:8.1f} s for {count['n']} CV evaluations "
            f"(bw={np.round(kr.bw, 4)})"
        )
        print(
            f"  whole search vs routecal's {k}-bandwidth sweep: {t_sm / t_rc:.0f}x; "
            f"per bandwidth evaluated: {per_sm / per_rc:.0f}x"
        )

    # ---- large sweep ----
    if args.n_large:
        n = args.n_large
        x, y = simulate(n, seed=1)
        grid = kernels.scott_multiples(x, multiples)
        evals = k * n * (n - 1)
        # One device: XLA:CPU already spreads each fused loop over all cores, and the fake-device
        # mesh was both slower and heavier here (see RESULTS.md); the mesh is for real devices.
        with PeakRSS() as mem:
            t = time.perf_counter()
            out = kernels.loo_nll(x, y, grid)
            t_large = time.perf_counter() - t
        assert np.all(np.isfinite(out))
        ru_peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"\nN={n} x {k} bandwidths LOO sweep (incl. compile): {t_large:.1f} s, "
            f"{evals / t_large:.3g} evals/s; peak RSS {mem.peak / 2**20:.0f} MiB "
            f"(process at start of sweep {mem.start / 2**20:.0f} MiB, "
            f"lifetime max {ru_peak:.0f} MiB); best multiple {multiples[np.argmin(out)]:.3g}"
        )


if __name__ == "__main__":
    main()
