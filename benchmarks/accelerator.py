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
  * training step of the Block AttnRes decoder LM (`models/decoder.py`) in bfloat16: model FLOPs
    (PaLM's 6 N + 12 L D T per token) per second, as a fraction of the chip's bf16 peak (MFU) from
    a table of known chips.
  * token-level predict throughput (`token_predict.predict_split`: forward with traces, per-token
    records, shards written) on random ids with the same LM.

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
    lm=dict(vocab_size=32_000, max_len=1024, d_model=1024, n_layers=8, n_heads=16,
            mlp_dim=2816, residual="block", n_blocks=4),
    batch=16, train_steps=10, predict_rows=128,
)
SMOKE = dict(
    perm_sizes=(2_000,), perm_b=256, numpy_n=2_000, numpy_b=4, cpu_b_large=128,
    nw_n=400, nw_k=4, ece_n=10_000, ceiling_n=512,
    lm=dict(vocab_size=64, max_len=16, d_model=16, n_layers=2, n_heads=2, mlp_dim=32,
            residual="block", n_blocks=2),
    batch=4, train_steps=2, predict_rows=8,
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


def _decoder(s: dict):
    from flax import nnx

    from routecal.models.decoder import Decoder
    from routecal.models.decoder_config import DecoderConfig

    cfg = DecoderConfig(dtype="bfloat16", **s["lm"])
    return cfg, Decoder(cfg, rngs=nnx.Rngs(params=0, dropout=1))


def bench_lm(s: dict, rows: list) -> None:
    """bf16 training step of the Block AttnRes decoder LM; MFU from the PaLM model-FLOP count
    (Chowdhery et al. 2022, App. B): 6 N + 12 L D T FLOPs per token, N the parameters."""
    import optax
    from flax import nnx

    from routecal.models.decoder import num_params

    cfg, model = _decoder(s)
    b, t = s["batch"], cfg.max_len
    optimizer = nnx.Optimizer(model, optax.adamw(1e-4), wrt=nnx.Param)
    ids = jax.random.randint(jax.random.key(1), (b, t + 1), 0, cfg.vocab_size)

    @nnx.jit
    def step(model, optimizer, ids):
        def loss_fn(m):
            out = m(ids[:, :-1], train=True)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, ids[:, 1:]).mean()
            return ce + out.aux_loss

        loss, grads = nnx.value_and_grad(loss_fn)(model)
        optimizer.update(model, grads)
        return loss

    def steps():
        for _ in range(s["train_steps"]):
            loss = step(model, optimizer, ids)
        return loss

    dt, _ = timed(steps, repeats=1)
    dt /= s["train_steps"]
    n = num_params(model)
    model_flops = (6 * n + 12 * cfg.n_layers * cfg.d_model * t) * b * t
    peak = chip_peak(jax.local_devices()[0])
    mfu = f"{model_flops / dt / peak:.1%} of {peak:.3g} FLOP/s" if peak else "n/a (unknown peak)"
    rows.append((
        f"LM train step bf16 (Block AttnRes decoder, {n / 1e6:.0f}M params, B={b}, T={t})",
        f"{dt * 1e3:.1f} ms", f"{model_flops / dt:.3g} model FLOP/s; MFU {mfu}",
    ))

    bench_token_predict(s, rows, cfg, model)


def bench_token_predict(s: dict, rows: list, cfg, model) -> None:
    """`token_predict.predict_split` (forward with traces, per-token records, shards on disk)."""
    import tempfile

    from routecal.data.text import TextSplit
    from routecal.training import token_predict

    n, t = s["predict_rows"], cfg.max_len
    ids = np.random.default_rng(0).integers(0, cfg.vocab_size - 1, (n, t + 1), dtype=np.int32)
    split = TextSplit(ids=ids, domain="in", n_bytes=n * t, n_targets=n * t)
    with tempfile.TemporaryDirectory() as d:
        dt, _ = timed(lambda: token_predict.predict_split(
            model, split, d, pad=cfg.vocab_size - 1, batch_size=s["batch"]), repeats=1)
    rows.append((
        f"token predict ({n} rows x T={t}, traces, shards written)", f"{dt:.2f} s",
        f"{n * t / dt:,.0f} tokens/s",
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
    for bench in (bench_permutation, bench_nw, bench_ece, bench_lm):
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
