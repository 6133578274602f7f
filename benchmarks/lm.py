"""Causal-LM throughput: training tokens/s and MFU, AttnRes overhead, token-predict throughput/RSS.

    PYTHONPATH=. python benchmarks/lm.py [--steps 3 --repeats 5 --predict-tokens 50000,1000000]

1. The CPU's f32 matmul rate: best of several 1024^3 `jnp.dot`s (2 n^3 FLOP each), the MFU
   denominator.
2. Training: the default `configs/lm_stdlib.py` shape (d 128, 4 layers, SwiGLU 384, T = 256,
   batch 16) for residual standard / full / block (and moe), timed in interleaved rounds of `--steps`
   jit-compiled AdamW steps (`routecal.training.lm.make_lm_train_step`) so background load hits every mode
   alike; best and median round reported, compile excluded. Model FLOPs per token: 6 x (non-
   embedding parameters + tied head) + 12 x layers x T x D for attention scores and values
   (forward 2 x 2 x T x D per layer, backward twice that; the full T x T square, as computed).
   MFU = achieved model FLOP/s / measured matmul FLOP/s.
3. Token predict: `token_predict.predict_split` streaming `--predict-tokens` records of the near
   domain (Lib/test, the largest split) to shards, in a fresh child process per count that
   reports its own peak RSS (VmHWM: everything included, JAX, the corpus, compile).
   Model: `--predict-model` "default" (the config above, block residual) or "quick" (d 16,
   2 layers: throughput then measures the pipeline, not the model).

Prints one JSON object per measurement.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
from flax import nnx

from routecal.config import load_config
from routecal.training import lm, optim

CONFIG = "configs/lm_stdlib.py"


def matmul_rate(n: int = 1024, repeats: int = 10) -> float:
    """Best observed f32 matmul FLOP/s on the default device (2 n^3 FLOP per product)."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.float32)
    f = jax.jit(lambda x: x @ x)
    f(a).block_until_ready()
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        f(a).block_until_ready()
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def model_flops_per_token(model, seq_len: int) -> float:
    """6 N (non-embedding params, plus the tied head's D x V) + 12 L T D (attention)."""
    cfg = model.cfg
    n = sum(
        x.size
        for path, x in nnx.to_flat_state(nnx.state(model, nnx.Param))
        if "embed" not in "/".join(map(str, path))
    )
    head = cfg.d_model * cfg.vocab_size
    if cfg.mlp_type != "dense":  # only top_k of n_experts expert MLPs run per token
        per_expert = 3 * cfg.d_model * cfg.expert_hidden
        n -= len(cfg.moe_layers) * (cfg.n_experts - cfg.top_k) * per_expert
    return 6.0 * (n + head) + 12.0 * cfg.n_layers * seq_len * cfg.d_model


def bench_training(variants: list[str], batch: int, steps: int, repeats: int) -> dict:
    runs = {}
    for v in variants:
        cfg = load_config(f"{CONFIG}:{v}", [f"train.batch_size={batch}", "data.max_bytes=2000"])
        task = lm.LMTask(cfg)
        model = task.build_model()
        opt = nnx.Optimizer(model, optim.make_tx(cfg.train), wrt=nnx.Param)
        step = nnx.cached_partial(task.train_step("all"), model, opt)
        rows = jax.device_put(task.dataset.train.ids[:batch])
        t = time.perf_counter()
        jax.block_until_ready(step(rows))
        runs[v] = dict(
            step=step,
            rows=rows,
            compile_s=time.perf_counter() - t,
            times=[],
            flops=model_flops_per_token(model, cfg.data.seq_len),
            tokens=batch * cfg.data.seq_len,
        )
    for _ in range(repeats):  # interleaved rounds
        for r in runs.values():
            t = time.perf_counter()
            for _ in range(steps):
                out = r["step"](r["rows"])
            jax.block_until_ready(out)
            r["times"].append((time.perf_counter() - t) / steps)
    return runs


def peak_rss_mb() -> float:
    """This process's peak RSS in MB: VmHWM of /proc/self/status (Linux), else ru_maxrss.

    Not ru_maxrss on Linux: after fork + exec it keeps the parent's high-water mark, so a child
    of a large parent would report the parent's size.
    """
    try:
        for line in open("/proc/self/status"):
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _predict_child(n_tokens: int, model_kind: str) -> None:
    """Runs in a child process: streams n_tokens records, prints throughput JSON."""
    from routecal.data.text import load_text_dataset
    from routecal.training import token_predict

    over = ["data.max_bytes=None", "model.residual='block'"]
    if model_kind == "quick":
        over += ["model.d_model=16", "model.n_layers=2", "model.n_heads=2", "model.mlp_dim=32"]
    cfg = load_config(f"{CONFIG}", over)
    ds = load_text_dataset(cfg.data)
    model = lm.build_lm_model(cfg, ds)
    split = ds.split("near")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        out = token_predict.predict_split(
            model, split, f"{tmp}/p", pad=ds.tokenizer.pad, batch_size=32, max_tokens=n_tokens
        )
        wall = time.perf_counter() - t
        from routecal.files import predictions

        got = predictions.load(out)
        n = len(got["confidence"])
        rss = peak_rss_mb()
        res = dict(
            predict_tokens=n,
            predict_wall_s=wall,
            tokens_per_s=n / wall,
            shards=len(got.index["shards"]),
            columns=len(got),
            self_peak_rss_mb=rss,
        )
        print(json.dumps(res))


def bench_predict(n_tokens: int, model_kind: str) -> dict:
    code = f"import benchmarks.lm as b; b._predict_child({n_tokens}, {model_kind!r})"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if proc.returncode:
        raise RuntimeError(proc.stderr[-2000:])
    res = json.loads(proc.stdout.strip().splitlines()[-1])
    return {**res, "model": model_kind}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=3, help="train steps per timing round")
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds per variant")
    ap.add_argument("--variants", default="standard,full,block,moe")
    ap.add_argument(
        "--predict-tokens",
        default="50000,1000000",
        help="comma-separated record counts (peak RSS should not grow with N)",
    )
    ap.add_argument("--predict-model", default="quick", choices=("quick", "default"))
    ap.add_argument("--skip-train", action="store_true")
    args = ap.parse_args()

    rate = matmul_rate()
    print(json.dumps({"matmul_f32_gflops": rate / 1e9, "devices": jax.device_count()}))
    if not args.skip_train:
        runs = bench_training(args.variants.split(","), args.batch, args.steps, args.repeats)
        std = min(runs["standard"]["times"]) if "standard" in runs else None
        for v, r in runs.items():
            best, med = min(r["times"]), statistics.median(r["times"])
            tok_s = r["tokens"] / best
            print(
                json.dumps(
                    {
                        "variant": v,
                        "step_s_best": best,
                        "step_s_median": med,
                        "tokens_per_s": tok_s,
                        "model_gflop_per_token": r["flops"] / 1e9,
                        "mfu": tok_s * r["flops"] / rate,
                        "compile_s": r["compile_s"],
                        "relative_to_standard": best / std if std else None,
                    }
                )
            )
    for n in [int(x) for x in str(args.predict_tokens).split(",") if x]:
        print(json.dumps(bench_predict(n, args.predict_model)))


if __name__ == "__main__":
    main()
