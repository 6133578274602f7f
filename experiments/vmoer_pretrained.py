"""VMoER on a pretrained MoE LM: retrofit routing posteriors, score them on multiple-choice QA.

The VMoER paper's table (Li and Wicker, arXiv:2603.09453) for a checkpoint you have on disk:
deterministic router vs retrofitted variational routers (only the posterior trained, on the MCQA
train split): routing stability, ECE, MCE, NLL, OOD AUROC near / far, router FLOP overhead,
accuracy. Nothing downloads: bring the checkpoint directory (config.json, *.safetensors,
tokenizer.json) and MCQA files.

    PYTHONPATH=. python experiments/vmoer_pretrained.py \
        --checkpoint /ckpt/granite-3.1-3b-a800m \
        --train obqa/train.jsonl --test obqa/test.jsonl \
        --near arc/ARC-Easy-test.jsonl,arc/ARC-Challenge-test.jsonl --far medmcqa/dev.jsonl \
        --workdir runs/vmoer_granite --routers det,mfvr,lowrank,vtsr --steps 500 --seeds 0,1,2 \
        [--mesh fsdp=8 | --mesh fsdp=2,expert=4] [--dtype bfloat16] [--max-questions 1000]

MCQA files are JSONL, one question per line: {"question": str, "choices": [str, ...],
"answer": int index or letter} (OpenBookQA, ARC, MedMCQA and SciQ convert to it line by line).
Prompt: "Question: ...\\nA. ...\\nB. ...\\nAnswer:"; the option scores are the next-token logits of
" A", " B", ... at the last prompt token (the answer-letter scoring of the paper).

Writes <workdir>/<router>/seed<k>/ (posterior checkpoints, metrics) and <workdir>/results.json +
table.md. A run stopped midway resumes (posterior checkpoints; finished cells are cached).
What has run: only the tiny CI smoke test (`tests/models/pretrained/test_vmoer_pretrained_exp.py`);
no real checkpoint could be downloaded where this was written, so no paper-scale numbers exist yet.

Stability here: Jaccard of each MoE layer's top-K sets, clean vs N(0, sigma^2) noise (sigma = 0.01)
added to the token embeddings (the first layer's input hidden state), mean over layers and tokens;
the paper perturbs every MoE layer's input. Routers: det (imported), mfvr (logit space, diagonal),
lowrank (logit space, rank 4), vtsr (temperature, selection space).
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

import routecal as rc
from routecal import flops
from routecal.models import vmoer
from routecal.models.pretrained import load_hf
from routecal.models.pretrained.retrofit import RetrofitConfig, choice_logits, retrofit

ROUTERS = {
    "det": None,
    "mfvr": {"mlp_type": "vmoer_logit"},
    "lowrank": {"mlp_type": "vmoer_logit", "vmoer": {"rank": 4}},
    "vtsr": {"mlp_type": "vmoer_temp"},
}
LETTERS = "ABCDEFGHIJ"


def read_mcqa(path: str, max_questions: int | None = None) -> list[dict[str, Any]]:
    """Questions of a JSONL file; ValueError naming the file and line of a malformed one."""
    p = pathlib.Path(path)
    if not p.is_file():
        raise ValueError(f"mcqa file: {path!r} does not exist")
    out = []
    for i, line in enumerate(p.read_text().splitlines(), 1):
        if not line.strip():
            continue
        q = json.loads(line)
        choices, ans = q.get("choices"), q.get("answer")
        if not q.get("question") or not isinstance(choices, list) or not 2 <= len(choices) <= 10:
            raise ValueError(f"{path}:{i}: needs a question and 2-10 choices")
        ans = LETTERS.index(ans) if isinstance(ans, str) else ans
        if not isinstance(ans, int) or not 0 <= ans < len(choices):
            raise ValueError(f"{path}:{i}: answer {q.get('answer')!r} out of range")
        out.append({"question": q["question"], "choices": choices, "answer": ans})
        if max_questions and len(out) >= max_questions:
            break
    if not out:
        raise ValueError(f"mcqa file: {path!r} holds no question")
    return out


def encode(questions: list[dict], tokenizer: Any, max_len: int) -> dict[str, np.ndarray]:
    """Prompt ids [N, T] (right-padded: the causal model never sees the padding before the
    answer position), answer position [N], option letter ids [N, K], labels [N]."""
    k = len(questions[0]["choices"])
    if any(len(q["choices"]) != k for q in questions):
        raise ValueError("questions: every question of one file must have the same option count")
    letter_ids = []
    for letter in LETTERS[:k]:
        ids = tokenizer.encode(" " + letter, add_special_tokens=False).ids
        if len(ids) != 1:
            raise ValueError(f"tokenizer: ' {letter}' is not a single token ({ids})")
        letter_ids.append(ids[0])
    rows = []
    for q in questions:
        text = f"Question: {q['question']}\n" + "".join(
            f"{LETTERS[j]}. {c}\n" for j, c in enumerate(q["choices"])
        ) + "Answer:"
        rows.append(tokenizer.encode(text).ids[-max_len:])
    t = max(len(r) for r in rows)
    ids = np.zeros((len(rows), t), np.int32)
    for i, r in enumerate(rows):
        ids[i, : len(r)] = r
    return {
        "ids": ids,
        "position": np.array([len(r) - 1 for r in rows], np.int32),
        "choice_ids": np.tile(np.array(letter_ids, np.int32), (len(rows), 1)),
        "label": np.array([q["answer"] for q in questions], np.int32),
    }


def _rows(data: dict[str, np.ndarray], idx: np.ndarray) -> dict[str, np.ndarray]:
    return {k: v[idx] for k, v in data.items()}


@nnx.jit
def _probs(model: nnx.Module, batch: dict) -> jax.Array:
    return jax.nn.softmax(choice_logits(model, batch)[0], axis=-1)


def option_probs(model: nnx.Module, data: dict, batch_size: int, n_samples: int) -> np.ndarray:
    """[S, N, K] option probabilities from S stochastic passes (S = 1 for the deterministic
    router); the last batch is padded so every call has one shape."""
    n = len(data["label"])
    fwd = _probs
    out = []
    for _ in range(n_samples):
        parts = []
        for s in range(0, n, batch_size):
            idx = np.arange(s, s + batch_size) % n
            parts.append(np.asarray(fwd(model, _rows(data, idx)))[: min(batch_size, n - s)])
        out.append(np.concatenate(parts))
    return np.stack(out)


def stability(model: nnx.Module, data: dict, sigma: float, seed: int, batch_size: int) -> float:
    """Mean Jaccard of top-K expert sets, clean vs noisy token embeddings (same routing noise)."""
    ids = data["ids"][:batch_size]
    noisy = nnx.clone(model)
    emb = noisy.embed.embedding  # noise drawn on the devices that hold the (sharded) table
    emb[...] = jax.jit(
        lambda e, k: e + (sigma * jax.random.normal(k, e.shape, jnp.float32)).astype(e.dtype)
    )(emb[...], jax.random.key(seed))
    experts = []
    for m in (nnx.clone(model), noisy):
        tr = m(ids, return_traces=True).traces["mlp"]
        experts.append([np.asarray(t["experts"]) for t in tr])
    return rc.uncertainty.routing_stability(experts[0], experts[1]).overall


def scores(probs_SxNxK: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
    p = probs_SxNxK.mean(0)
    conf, correct = p.max(-1), (p.argmax(-1) == labels).astype(np.float64)
    return {
        "accuracy": float(correct.mean()),
        "ece": rc.calibration.ece(conf, correct, n_bins=15),
        "mce": rc.calibration.ece(conf, correct, n_bins=15, norm="max"),
        "nll": rc.calibration.nll(p, labels),
        "_mean": p,
        "_samples": probs_SxNxK,
    }


def run_cell(args: argparse.Namespace, router: str, seed: int, data: dict) -> dict[str, Any]:
    """Imports, retrofits (variational routers) and scores one router x seed."""
    cell = pathlib.Path(args.workdir) / router / f"seed{seed}"
    done = cell / "metrics.json"
    if done.exists():
        return json.loads(done.read_text())
    t0 = time.time()
    mesh = _mesh(args.mesh)
    model, info = load_hf(args.checkpoint, dtype=args.dtype, mesh=mesh, seed=seed,
                          expert_axis="expert" if mesh is not None and "expert" in mesh.shape
                          else None, overrides=ROUTERS[router])
    train = data["train"]
    n_train = len(train["label"])
    if ROUTERS[router] is not None:
        rng_seed = seed

        def batches(step: int) -> dict[str, np.ndarray]:
            rng = np.random.default_rng([rng_seed, step])
            return _rows(train, rng.choice(n_train, args.batch_size, replace=n_train < 2))

        retrofit(model, batches, cell, RetrofitConfig(steps=args.steps, lr=args.lr,
                                                      checkpoint_every=args.checkpoint_every))
        vmoer.set_router_sampling(model, True)
    n_samples = 1 if ROUTERS[router] is None else args.samples
    res: dict[str, Any] = {"router": router, "seed": seed}
    split_scores = {}
    for split in ("test", "near", "far"):
        if split in data:
            s = scores(option_probs(model, data[split], args.batch_size, n_samples),
                       data[split]["label"])
            split_scores[split] = s
            res.update({f"{split}_{k}": v for k, v in s.items() if not k.startswith("_")})
    for split in ("near", "far"):
        if split in split_scores:
            for kind in ("entropy", "max_prob"):
                res[f"auroc_{split}_{kind}"] = rc.uncertainty.ood_auroc(
                    rc.uncertainty.ood_score(split_scores["test"]["_mean"], kind),
                    rc.uncertainty.ood_score(split_scores[split]["_mean"], kind))
            if n_samples > 1:
                res[f"auroc_{split}_mi"] = rc.uncertainty.ood_auroc(
                    rc.uncertainty.mutual_information(split_scores["test"]["_samples"]),
                    rc.uncertainty.mutual_information(split_scores[split]["_samples"]))
    vmoer.set_router_sampling(model, False)
    res["stability"] = stability(model, data["test"], args.sigma, seed, args.batch_size)
    res["router_flops_overhead_pct"] = _flops_overhead(info.config, router)
    res["param_gib_per_device"] = info.param_bytes_per_device / 2**30
    res["wall_s"] = time.time() - t0
    cell.mkdir(parents=True, exist_ok=True)
    done.write_text(json.dumps(res, indent=1))
    return res


def _flops_overhead(cfg: Any, router: str) -> float:
    """Inference FLOP overhead of the router over the deterministic MoE layer, in percent (XLA
    cost analysis at the checkpoint's layer shape, `routecal.flops`)."""
    if ROUTERS[router] is None:
        return 0.0
    rank = int(dict(ROUTERS[router].get("vmoer", {})).get("rank", 0))
    shape = flops.LayerShape(router, cfg.d_model, cfg.n_experts, cfg.top_k, cfg.expert_hidden,
                             "swiglu", n_layers=len(cfg.moe_layers), vmoer_rank=rank)
    o = flops.vmoer_overhead(shape)
    return float(o["overhead_logit_infer_pct" if "logit" in ROUTERS[router]["mlp_type"]
                   else "overhead_temp_infer_pct"])


def _mesh(spec: str | None) -> jax.sharding.Mesh | None:
    """'fsdp=8' or 'fsdp=2,expert=4' -> a Mesh over the local devices (None: one device)."""
    if not spec:
        return None
    axes = dict(kv.split("=") for kv in spec.split(","))
    sizes = tuple(int(v) for v in axes.values())
    if "fsdp" not in axes or int(np.prod(sizes)) != jax.device_count():
        raise ValueError(f"--mesh: {spec!r} needs an fsdp axis and {jax.device_count()} devices")
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(sizes), tuple(axes))


def to_markdown(rows: list[dict[str, Any]]) -> str:
    """Mean and (min, max) over seeds per router for the headline columns."""
    cols = ["stability", "test_ece", "test_mce", "test_nll", "auroc_near_entropy",
            "auroc_far_entropy", "router_flops_overhead_pct", "test_accuracy"]
    lines = ["| router | seeds | " + " | ".join(cols) + " |", "|---" * (len(cols) + 2) + "|"]
    for router in dict.fromkeys(r["router"] for r in rows):
        rs = [r for r in rows if r["router"] == router]
        cells = []
        for c in cols:
            v = np.array([r[c] for r in rs if c in r], float)
            cells.append("-" if not v.size else f"{v.mean():.4f} ({v.min():.4f}, {v.max():.4f})")
        lines.append(f"| {router} | {len(rs)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--train", required=True)
    ap.add_argument("--test", required=True)
    ap.add_argument("--near", default="", help="comma-separated near-domain OOD files")
    ap.add_argument("--far", default="", help="comma-separated far-domain OOD files")
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--routers", default="det,mfvr,lowrank,vtsr")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--samples", type=int, default=8, help="stochastic passes of VMoER routers")
    ap.add_argument("--sigma", type=float, default=0.01, help="embedding noise for stability")
    ap.add_argument("--max-questions", type=int, default=0)
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--mesh", default="")
    args = ap.parse_args(argv)
    routers = [r for r in args.routers.split(",") if r]
    for r in routers:
        if r not in ROUTERS:
            raise ValueError(f"--routers: unknown {r!r}; expected some of {list(ROUTERS)}")
    tok = rc.pretrained.load_tokenizer(args.checkpoint)
    if tok is None:
        raise ValueError(f"--checkpoint: no tokenizer.json in {args.checkpoint!r}")
    mq = args.max_questions or None
    files = {"train": [args.train], "test": [args.test],
             "near": [f for f in args.near.split(",") if f],
             "far": [f for f in args.far.split(",") if f]}
    data = {}
    for split, paths in files.items():
        if paths:
            qs = [q for p in paths for q in read_mcqa(p, mq)]
            data[split] = encode(qs, tok, args.max_len)
    rows = [run_cell(args, r, int(s), data) for r in routers for s in args.seeds.split(",")]
    out = pathlib.Path(args.workdir)
    (out / "results.json").write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))
    table = to_markdown(rows)
    (out / "table.md").write_text(table + "\n")
    print(table)
    return {"rows": rows, "table": table}


if __name__ == "__main__":
    main()
