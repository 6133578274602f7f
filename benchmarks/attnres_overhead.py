"""Train-step time of Full and Block AttnRes relative to the standard residual, in one process.

    python benchmarks/attnres_overhead.py [--d-model 64 --n-layers 4 --batch 64 --steps 30 --repeats 5]

All three models have the same width, depth, heads and MLP width and run the same jit-compiled
AdamW train step (`routecal.training.train`) on the same batch of digits-shaped tokens (16 tokens x 4). Timing
rounds are interleaved across the residual modes (so background load hits all alike); the best
(minimum) round, the usual estimate under background load (as `timeit` does), and the median round
are reported; compile time is excluded.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from routecal.models.transformer import ModelConfig, Transformer
from routecal.training import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--d-model", type=int, default=64)
    ap.add_argument("--n-layers", type=int, default=4)
    ap.add_argument("--n-blocks", type=int, default=2)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--seq-len", type=int, default=16)
    ap.add_argument("--steps", type=int, default=10, help="train steps per timing round")
    ap.add_argument("--repeats", type=int, default=15, help="timing rounds per mode")
    args = ap.parse_args()

    rng = np.random.default_rng(0)
    tokens = jax.device_put(rng.uniform(size=(args.batch, args.seq_len, 4)).astype(np.float32))
    labels = jax.device_put(rng.integers(0, 10, size=args.batch).astype(np.int32))
    tcfg = ml_collections.ConfigDict(
        dict(steps=10_000, warmup=10, lr=1e-3, weight_decay=0.0, grad_clip=1.0)
    )
    step = train._make_train_step("all")
    modes = {}
    for residual in ("standard", "full", "block"):
        cfg = ModelConfig(
            seq_len=args.seq_len,
            token_dim=4,
            num_classes=10,
            d_model=args.d_model,
            n_layers=args.n_layers,
            n_heads=4,
            mlp_dim=2 * args.d_model,
            residual=residual,
            n_blocks=args.n_blocks,
        )
        model = Transformer(cfg, rngs=nnx.Rngs(0))
        opt = nnx.Optimizer(model, train.make_tx(tcfg), wrt=train.trainable_filter("all"))
        t0 = time.perf_counter()
        jax.block_until_ready(step(model, opt, tokens, labels))  # compile
        print(f"{residual:>8}: compiled in {time.perf_counter() - t0:.1f}s")
        modes[residual] = (model, opt)

    times: dict[str, list[float]] = {m: [] for m in modes}
    for _ in range(args.repeats):
        for name, (model, opt) in modes.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                out = step(model, opt, tokens, labels)
            jax.block_until_ready(out)
            times[name].append((time.perf_counter() - t0) / args.steps)

    best = {m: min(ts) for m, ts in times.items()}
    med = {m: statistics.median(ts) for m, ts in times.items()}
    print(
        f"\nd_model={args.d_model} n_layers={args.n_layers} (L={2 * args.n_layers} sublayers) "
        f"n_blocks={args.n_blocks} batch={args.batch} T={args.seq_len} devices={jax.device_count()}"
    )
    print(f"{'residual':>8}  {'best ms':>8}  {'ratio':>6}  {'median ms':>9}  {'ratio':>6}")
    for name in times:
        print(
            f"{name:>8}  {1e3 * best[name]:8.2f}  {best[name] / best['standard']:6.2f}  "
            f"{1e3 * med[name]:9.2f}  {med[name] / med['standard']:6.2f}"
        )


if __name__ == "__main__":
    main()
