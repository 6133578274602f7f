"""Tokens per second of one dropless MoE layer: dense (every expert on every token) vs sparse.

    PYTHONPATH=. python benchmarks/moe_dispatch.py            # OLMoE and DeepSeek-V2-Lite shapes
    PYTHONPATH=. python benchmarks/moe_dispatch.py --smoke    # tiny shapes (CI)

One `causal.DecoderMoE` layer (router, SwiGLU experts, shared experts) in float32 on one call of
B x T tokens, jitted, timed after a warm-up call (best of `--repeats`), for each dispatch of
`--modes` (default dense and the backend's `auto` choice: sparse_blocks on CPU, ragged on GPU/TPU).
Shapes: OLMoE-1B-7B (d 2048, 64 experts, top-8, expert width 1024) and DeepSeek-V2-Lite (d 2048,
64 routed experts of width 1408, top-6, 2 shared experts = one ungated SwiGLU of width 2816).
Checks that every mode gives the dense output (max |diff| printed) and prints one line per
(shape, mode) and, last, `olmoe_speedup=<dense time / sparse time>`.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from routecal.models import causal, dispatch, moe


@dataclasses.dataclass(frozen=True)
class Shape:
    name: str
    d_model: int
    n_experts: int
    top_k: int
    expert_hidden: int
    shared_hidden: int = 0


SHAPES = (
    Shape("olmoe", 2048, 64, 8, 1024),
    Shape("deepseek_v2_lite", 2048, 64, 6, 1408, shared_hidden=2 * 1408),
)
SMOKE_SHAPES = (Shape("olmoe", 32, 8, 2, 16), Shape("deepseek_v2_lite", 32, 8, 3, 24, 48))


def layer(shape: Shape, mode: str, seed: int = 0) -> causal.DecoderMoE:
    """One dropless float32 MoE layer of `shape` computing its experts by `mode`."""
    cfg = moe.MoEConfig(
        d_model=shape.d_model, mlp_dim=shape.expert_hidden, n_experts=shape.n_experts,
        top_k=shape.top_k, capacity_factor=0.0, lb_coef=0.0, z_coef=0.0, expert_type="swiglu",
    )
    return causal.DecoderMoE(cfg, shared_hidden=shape.shared_hidden, dispatch=mode,
                             rngs=nnx.Rngs(seed))


def time_layer(model: nnx.Module, x: jax.Array, repeats: int) -> tuple[float, np.ndarray]:
    """(best wall seconds of one call after a warm-up, output) of the jitted layer."""
    graphdef, state = nnx.split(model)

    @jax.jit
    def f(state, x):
        y, _, _ = nnx.merge(graphdef, state)(x)
        return y

    y = f(state, x).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        f(state, x).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return best, np.asarray(y)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--smoke", action="store_true", help="tiny shapes (seconds; run by CI)")
    p.add_argument("--tokens", type=int, default=512, help="tokens per call (B=1, T=tokens)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--modes", default="dense,auto", help="comma-separated dispatch modes")
    args = p.parse_args(argv)
    shapes = SMOKE_SHAPES if args.smoke else SHAPES
    n_tokens = 24 if args.smoke else args.tokens
    modes = [dispatch.resolve_dispatch(m) for m in args.modes.split(",")]
    print(f"backend {jax.default_backend()}, {n_tokens} tokens per call, float32, "
          f"load average {os.getloadavg()[0]:.1f}")
    speedup = None
    for shape in shapes:
        x = jax.random.normal(jax.random.key(1), (1, n_tokens, shape.d_model), jnp.float32)
        times, ref = {}, None
        for mode in dict.fromkeys(modes):
            sec, y = time_layer(layer(shape, mode), x, args.repeats)
            ref = y if ref is None else ref
            diff = float(np.max(np.abs(y - ref)))
            times[mode] = sec
            print(f"{shape.name:<18} {mode:<14} {sec * 1e3:10.1f} ms  "
                  f"{n_tokens / sec:10.1f} tokens/s  max|y - y_first| {diff:.2e}")
            if diff > 1e-4 * max(1.0, float(np.max(np.abs(ref)))):
                raise SystemExit(f"{shape.name}: {mode} output differs from {modes[0]}")
        sparse = [m for m in times if m != "dense"]
        if "dense" in times and sparse:
            ratio = times["dense"] / times[sparse[0]]
            print(f"{shape.name:<18} dense / {sparse[0]} = {ratio:.2f}x")
            if shape.name == "olmoe":
                speedup = ratio
    if speedup is not None:
        print(f"olmoe_speedup={speedup:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
