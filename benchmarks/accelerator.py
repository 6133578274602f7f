"""One-shot accelerator benchmark: the statistics engines and a training step on one chip.

    python benchmarks/accelerator.py            # one GPU/TPU: < 4 min (compiles included)
    python benchmarks/accelerator.py --smoke    # tiny sizes on CPU in seconds (CI runs it)
    python benchmarks/accelerator.py --json out.json

Uses whatever jax the machine has (routecal does not install GPU/TPU wheels) and only the project's
own dependencies (numpy, jax, flax, optax) plus this repository. Prints the machine and one table:

  * within-bin permutation test, N = 10^5 and 10^6, B = 10^4, on the default backend; against the
    numpy loop of benchmarks/permutation.py timed on a subsample (N_sub, B_sub) and scaled up
    linearly in N and B, and against this machine's CPU backend in the same run (all host cores as
    XLA CPU devices; at N = 10^6 with B / 10 permutations, scaled up).
  * Nadaraya-Watson leave-one-out sweep (N x K bandwidths): kernel evaluations per second, against
    the chip's exp throughput measured now (a fused exp-sum with no memory traffic; the ceiling).
  * top-label ECE on 10^7 x 10 device-resident probabilities vs numpy.
  * training step of the AttnRes classifier (routecal has no LM decoder on main yet) in bfloat16:
    model FLOPs (3 x XLA's forward count) per second, as a fraction of the chip's bf16 peak (MFU)
    from a table of known chips.
  * predict throughput (examples and tokens per second, traces included): image predict, since
    token-level predict is not on main yet.

Targets (issue 16, one H200-class GPU): permutation N = 10^6, B = 10^4 under 1 s; NW sweep >= 10^11
kernel evaluations per second.
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import platform
import sys
import time

os.environ.setdefault("XLA_FLAGS", f"--xla_force_host_platform_device_count={os.cpu_count()}")

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import kernels as kernels_bench  # noqa: E402
import permutation as permutation_bench  # noqa: E402

from routecal import parallel  # noqa: E402
from routecal.stats import calibration, diagnostics, kernels  # noqa: E402

# Dense bfloat16 peak FLOP/s per chip (vendor data sheets; SXM parts for NVIDIA).
BF16_PEAK = {
    "H200": 989e12, "H100": 989e12, "A100": 312e12, "L4": 121e12, "A10G": 125e12,
    "TPU v4": 275e12, "TPU v5 lite": 197e12, "TPU v5e": 197e12, "TPU v5p": 459e12,
    "TPU v6 lite": 918e12, "TPU v6e": 918e12,
}

FULL = dict(
    perm_sizes=(100_000, 1_000_000), perm_b=10_000, numpy_n=100_000, numpy_b=50,
    cpu_b_large=1_000, nw_n=100_000, nw_k=32, ece_n=10_000_000, ceiling_n=32_768,
    model=dict(d_model=1024, n_layers=4, n_heads=16, mlp_dim=4096, seq_len=256, token_dim=64),
    batch=64, train_steps=10, predict_n=4096,
)
SMOKE = dict(
    perm_sizes=(2_000,), perm_b=256, numpy_n=2_000, numpy_b=4, cpu_b_large=128,
    nw_n=400, nw_k=4, ece_n=10_000, ceiling_n=512,
    model=dict(d_model=16, n_layers=1, n_heads=2, mlp_dim=32, seq_len=8, token_dim=4),
    batch=8, train_steps=2, predict_n=32,
)


def timed(fn, repeats: int = 3) -> tuple[float, object]:
    """Best wall time of `fn()` after one warm-up call (compile), and its last output."""
    out = jax.block_until_ready(fn())
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        out = jax.block_until_ready(fn())
        best = min(best, time.perf_counter() - t)
    return best, out


def chip_peak(device: jax.Device) -> float | None:
    kind = device.device_kind
    return next((v for k, v in BF16_PEAK.items() if k.lower() in kind.lower()), None)


def bench_permutation(s: dict, rows: list) -> None:
    cpu_mesh = parallel.make_mesh(jax.devices("cpu"))
    acc_mesh = parallel.make_mesh(jax.local_devices()[:1])
    c, y, r = permutation_bench._data(s["numpy_n"])
    t0 = time.perf_counter()
    permutation_bench.numpy_permutation_test(c, y, r, s["numpy_b"])
    per_elem = (time.perf_counter() - t0) / (s["numpy_n"] * s["numpy_b"])
    for n in s["perm_sizes"]:
        c, y, r = permutation_bench._data(n)
        b = s["perm_b"]

        def run(mesh, n_perm, c=c, y=y, r=r):
            return diagnostics.within_bin_permutation_test(
                c, y, r, key=jax.random.key(0), n_permutations=n_perm, mesh=mesh
            )

        t_acc, res = timed(lambda b=b: run(acc_mesh, b), repeats=2)
        b_cpu = b if n <= 100_000 else s["cpu_b_large"]
        t_cpu, _ = timed(lambda b_cpu=b_cpu: run(cpu_mesh, b_cpu), repeats=1)
        t_cpu *= b / b_cpu
        t_np = per_elem * n * b
        rows.append((
            f"permutation test N={n:,} B={b:,}", f"{t_acc:.3f} s",
            f"numpy loop ~{t_np:.1f} s (scaled from N={s['numpy_n']:,} B={s['numpy_b']}): "
            f"{t_np / t_acc:.0f}x; CPU backend {len(cpu_mesh.devices)} dev "
            f"{t_cpu:.2f} s{' (scaled from B=' + str(b_cpu) + ')' if b_cpu != b else ''}: "
            f"{t_cpu / t_acc:.1f}x; p={res.p_value:.4f}",
        ))


def bench_nw(s: dict, rows: list) -> None:
    n, k = s["nw_n"], s["nw_k"]
    x, y = kernels_bench.simulate(n)
    grid = kernels.scott_multiples(x, np.geomspace(0.25, 4.0, k))
    t, _ = timed(lambda: kernels.loo_nll(x, y, grid), repeats=1)
    evals = k * n * (n - 1)
    ceiling = kernels_bench.exp_ceiling(s["ceiling_n"])
    rows.append((
        f"NW LOO sweep N={n:,} x {k} bandwidths", f"{t:.3f} s",
        f"{evals / t:.2e} kernel evals/s; exp ceiling (fused exp-sum) {ceiling:.2e}/s: "
        f"{evals / t / ceiling:.0%} of it",
    ))


def bench_ece(s: dict, rows: list) -> None:
    n = s["ece_n"]
    k1, k2 = jax.random.split(jax.random.key(0))
    probs = jax.nn.softmax(3.0 * jax.random.normal(k1, (n, 10)), axis=1)
    labels = jax.random.randint(k2, (n,), 0, 10)
    t_dev, e_dev = timed(lambda: calibration.ece_from_probs_jax(probs, labels))
    p_np, l_np = np.asarray(probs), np.asarray(labels)

    def numpy_ece():
        conf, corr = p_np.max(1), (p_np.argmax(1) == l_np)
        b = np.clip(np.ceil(conf * 15).astype(int) - 1, 0, 14)
        gap = np.bincount(b, corr - conf, 15)
        return np.sum(np.abs(gap)) / n

    t0 = time.perf_counter()
    e_np = numpy_ece()
    t_np = time.perf_counter() - t0
    rows.append((
        f"ECE {n:,} x 10", f"{t_dev * 1e3:.2f} ms",
        f"numpy {t_np * 1e3:.0f} ms: {t_np / t_dev:.0f}x; values {float(e_dev):.6f} / {e_np:.6f}",
    ))


def _model(s: dict):
    from flax import nnx

    from routecal.models.transformer import ModelConfig, Transformer

    cfg = ModelConfig(num_classes=10, residual="full", n_blocks=2, **s["model"])
    model = Transformer(cfg, rngs=nnx.Rngs(params=0, dropout=1))
    bf16 = lambda a: a.astype(jnp.bfloat16) if jnp.issubdtype(a.dtype, jnp.floating) else a
    nnx.update(model, jax.tree.map(bf16, nnx.state(model, nnx.Param)))
    return cfg, model


def bench_train(s: dict, rows: list) -> None:
    import optax
    from flax import nnx

    from routecal import flops

    cfg, model = _model(s)
    b = s["batch"]
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    x = jax.random.normal(jax.random.key(1), (b, cfg.seq_len, cfg.token_dim), jnp.bfloat16)
    labels = jax.random.randint(jax.random.key(2), (b,), 0, 10)

    @nnx.jit
    def step(model, optimizer, x, labels):
        def loss_fn(m):
            logits = m(x, train=True).logits.astype(jnp.float32)
            return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def steps():
        for _ in range(s["train_steps"]):
            loss = step(model, optimizer, x, labels)
        return loss

    t, _ = timed(steps, repeats=1)
    t /= s["train_steps"]
    model_flops = 3.0 * flops.model_flops(cfg, b)  # forward + backward ~ 3 forwards
    peak = chip_peak(jax.local_devices()[0])
    mfu = f"{model_flops / t / peak:.1%} of {peak:.3g} FLOP/s" if peak else "n/a (unknown peak)"
    n_params = sum(p.size for p in jax.tree.leaves(nnx.state(model, nnx.Param)))
    rows.append((
        f"AttnRes train step bf16 ({n_params / 1e6:.1f}M params, B={b}, T={cfg.seq_len})",
        f"{t * 1e3:.1f} ms", f"{model_flops / t:.3g} model FLOP/s; MFU {mfu}",
    ))
    bench_predict(s, rows, cfg, model)


def bench_predict(s: dict, rows: list, cfg, model) -> None:
    from routecal import predict

    n = s["predict_n"]
    x = np.random.default_rng(0).standard_normal((n, cfg.seq_len, cfg.token_dim), np.float32)
    bs = min(256, n)
    t, _ = timed(lambda: predict.predict_arrays(model, x, batch_size=bs)["probs"], repeats=1)
    rows.append((
        f"predict with traces (image path), {n:,} examples", f"{t:.3f} s",
        f"{n / t:,.0f} examples/s, {n * cfg.seq_len / t:,.0f} tokens/s",
    ))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--smoke", action="store_true", help="tiny sizes; seconds on CPU")
    ap.add_argument("--json", default=None, help="also write the table to this JSON file")
    args = ap.parse_args(argv)
    s = SMOKE if args.smoke else FULL
    dev = jax.local_devices()[0]
    machine = (
        f"{dev.device_kind} ({jax.default_backend()}, {jax.local_device_count()} local devices), "
        f"host {platform.processor() or platform.machine()} x {os.cpu_count()} cores, "
        f"jax {jax.__version__}"
    )
    print(f"machine: {machine}")
    rows: list[tuple[str, str, str]] = []
    t0 = time.perf_counter()
    for bench in (bench_permutation, bench_nw, bench_ece, bench_train):
        done = len(rows)
        bench(s, rows)
        for r in rows[done:]:
            print(f"  {r[0]}: {r[1]} ({time.perf_counter() - t0:.0f} s so far)", flush=True)
    print("\n| benchmark | time | comparison |\n|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]} | {r[2]} |")
    print(f"\ntotal wall {time.perf_counter() - t0:.0f} s")
    if args.json:
        out = {"machine": machine, "smoke": args.smoke, "rows": rows}
        pathlib.Path(args.json).write_text(json.dumps(out, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
