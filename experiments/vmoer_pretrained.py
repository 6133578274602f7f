"""VMoER on a pretrained MoE LM: retrofit routers, score them on the published MCQA benchmarks.

The VMoER paper's table (Li and Wicker, arXiv:2603.09453, Sec. 5) for a checkpoint on your disk:
the imported deterministic router vs retrofitted routers (only the routing posterior trained, on
the MCQA train split): stability at sigma = 0.01, ECE, MCE, NLL, Brier, OOD AUROC near / far (entropy,
max-prob, MI, gating entropy, router-logit variance), router FLOP overhead at the checkpoint's layer
shape, accuracy; seed bands and the change against `det`, beside the paper's claims. Nothing
downloads: bring the checkpoint directory (config.json, *.safetensors, tokenizer.json) and the files.

    PYTHONPATH=. python experiments/vmoer_pretrained.py \
        --checkpoint /ckpt/granite-3.1-3b-a800m \
        --train obqa/train.jsonl:openbookqa --test obqa/test.jsonl:openbookqa \
        --near arc/ARC-Easy-Test.jsonl:arc,arc/ARC-Challenge-Test.jsonl:arc \
        --far medmcqa/dev.json:medmcqa --workdir runs/vmoer_granite \
        --routers det,mfvr,fcvr,vtsr --steps 500 --seeds 0,1,2 [--mesh fsdp=8] [--dtype bfloat16]

Files are PATH:FORMAT, FORMAT one of `routecal.data.mcqa_formats.FORMATS` (openbookqa, arc, sciq, medmcqa;
JSONL, JSON or parquet as published), or tfds:NAME[:SPLIT] for data prepared with TFDS in
$TFDS_DATA_DIR (`routecal.data.mcqa_tfds`: ai2_arc/ARC-Easy, ai2_arc/ARC-Challenge, openbookqa),
e.g. `--near tfds:ai2_arc/ARC-Easy:test,tfds:ai2_arc/ARC-Challenge:test`. Options are scored by the next-token logits of the letters
" A", " B", ... after the prompt (`format_prompt` without its trailing space: pretrained BPE
vocabularies carry the space in the letter token); prompts are right-padded and read at their own
last token, because the imported model has no attention mask (left padding would be attended).
Writes <workdir>/<router>/seed<k>/ (posterior checkpoints, metrics.json), results.json, vmoer.csv
and table.md; a stopped run resumes (posterior checkpoints; finished cells are kept).

What has run: only the tiny CI smoke test (`tests/models/pretrained/test_vmoer_pretrained_exp.py`);
no real checkpoint could be downloaded where this was written: no paper-scale number exists yet.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from routecal import flops
from routecal.data import mcqa as mcqa_data
from routecal.data import mcqa_formats, mcqa_tfds
from routecal.files import workdir as workdir_io
from routecal.models import routers, vmoer
from routecal.models.pretrained import decoder_config, load_hf, load_tokenizer
from routecal.models.pretrained.checkpoint import read_config
from routecal.models.pretrained.retrofit import RetrofitConfig, retrofit
from routecal.stats import mcqa, uncertainty
from routecal.study import vmoer_lm_eval


def load_split(spec: str, domain: str, n_options: int | None, limit: int) -> mcqa_data.MCQA:
    """'path:format[,path:format...]' -> one MCQA (items of every file, the first `limit`)."""
    parts = []
    for item in (s for s in spec.split(",") if s):
        if item.startswith("tfds:"):  # tfds:NAME[:SPLIT], prepared in $TFDS_DATA_DIR
            name, _, split = item.removeprefix("tfds:").partition(":")
            parts.append(mcqa_tfds.load_mcqa_tfds(name, split or "test", n_options=n_options,
                                                  domain=domain))
            continue
        path, _, fmt = item.rpartition(":")
        if not path:
            raise ValueError(f"--{domain}: expected PATH:FORMAT, got {item!r}")
        parts.append(mcqa_formats.load_mcqa_file(path, fmt, n_options=n_options, domain=domain))
    q = [x for p in parts for x in p.questions][: limit or None]
    o = [x for p in parts for x in p.options][: limit or None]
    a = np.concatenate([p.answers for p in parts])[: limit or None]
    ds = mcqa_data.make_mcqa(q, o, a, name=spec, domain=domain)
    return dataclasses.replace(ds, n_dropped=sum(p.n_dropped for p in parts))  # other K: counted


def encode(ds: mcqa_data.MCQA, tokenizer: Any, max_len: int) -> dict[str, np.ndarray]:
    """ids [N, T] right-padded, position [N] (last prompt token), mask [N, T], answers [N]."""
    rows = [tokenizer.encode(mcqa_data.format_prompt(q, o).rstrip()).ids[-max_len:]
            for q, o in ds.items()]
    t = max(len(r) for r in rows)
    ids, mask = np.zeros((len(rows), t), np.int32), np.zeros((len(rows), t), np.float32)
    for i, r in enumerate(rows):
        ids[i, : len(r)], mask[i, : len(r)] = r, 1.0
    pos = np.array([len(r) - 1 for r in rows], np.int32)
    return {"ids": ids, "position": pos, "mask": mask, "answers": np.asarray(ds.answers)}


def letter_ids(tokenizer: Any, k: int) -> np.ndarray:
    out = []
    for letter in mcqa_data.LETTERS[:k]:
        ids = tokenizer.encode(" " + letter, add_special_tokens=False).ids
        if len(ids) != 1:
            raise ValueError(f"tokenizer: ' {letter}' is {len(ids)} tokens, need exactly 1")
        out.append(ids[0])
    return np.asarray(out, np.int32)


@nnx.jit
def _forward(model: nnx.Module, ids: jax.Array, pos: jax.Array):
    out = model(ids, return_traces=True)
    keep = ("experts", "router_probs", "router_var")
    return (out.logits[jnp.arange(ids.shape[0]), pos],
            [{k: t[k] for k in keep if k in t} for t in out.traces["mlp"]])


def predict(model: nnx.Module, d: dict[str, np.ndarray], bs: int) -> dict[str, Any]:
    """Answer-position logits [N, V] and per-layer traces [N, T, ...] in fixed-size batches."""
    n = len(d["ids"])
    logits, traces = [], []
    for s in range(0, n, bs):
        idx = np.arange(s, s + bs) % n  # the last batch repeats rows: one compile
        lg, tr = _forward(model, d["ids"][idx], d["position"][idx])
        m = min(bs, n - s)
        logits.append(np.asarray(lg)[:m])
        traces.append([{k: np.asarray(v)[:m] for k, v in t.items()} for t in tr])
    layers = [{k: np.concatenate([b[j][k] for b in traces]) for k in traces[0][j]}
              for j in range(len(traces[0]))]
    return {"logits": np.concatenate(logits), "layers": layers}


def stability(model, d, sigmas: list[float], bs: int, seed: int) -> dict[str, float]:
    """Mean over layers of the Jaccard of top-K sets over the real (unpadded) tokens, clean vs
    N(0, sigma^2 I) added to every MoE layer's input (`vmoer.set_hidden_noise`, the paper's); the
    clean run is the same graph at std 0, so one compiled forward pass serves every sigma."""

    def experts(std: float) -> list[np.ndarray]:
        m = nnx.clone(model)
        vmoer.set_hidden_noise(m, std, seed=1000 + seed, keep_zero=True)
        return [t["experts"] for t in predict(m, d, bs)["layers"]]

    clean = experts(0.0)
    out = {}
    for s in sigmas:
        per_layer = [float((uncertainty.jaccard(a, b) * d["mask"]).sum() / d["mask"].sum())
                     for a, b in zip(clean, experts(s), strict=True)]
        out[f"stability_{s:g}"] = float(np.mean(per_layer))
    return out


def evaluate(model, data: dict, letters: np.ndarray, args, seed: int) -> dict[str, Any]:
    """The metrics of `vmoer_lm_eval` (same names, so its table functions apply)."""
    res: dict[str, Any] = {}
    scores = {}
    for dom in ("in", "near", "far"):
        if dom not in data:
            continue
        d = data[dom]
        pred = predict(nnx.clone(model), d, args.batch_size)
        probs = mcqa.letter_option_probs(pred["logits"], letters)
        sampled = nnx.clone(model)
        mc = None
        if vmoer.set_router_sampling(sampled, True):
            mc = np.stack([mcqa.letter_option_probs(predict(sampled, d, args.batch_size)["logits"],
                                                    letters) for _ in range(args.samples)])
        s = {"entropy": uncertainty.ood_score(probs, "entropy"),
             "max_prob": uncertainty.ood_score(probs, "max_prob"),
             "gating_entropy": uncertainty.gating_entropy(
                 [t["router_probs"] for t in pred["layers"]], d["mask"])}
        if all("router_var" in t for t in pred["layers"]):
            s["router_logit_variance"] = uncertainty.router_logit_variance(
                [t["router_var"] for t in pred["layers"]], d["mask"])
        if mc is not None:
            s["mi"] = uncertainty.mutual_information(mc)
        scores[dom] = s
        if dom == "in":
            res.update(mcqa.mcqa_metrics(probs, d["answers"]))
        else:
            res[f"accuracy_{dom}"] = float(np.mean(probs.argmax(1) == d["answers"]))
    for dom in ("near", "far"):
        if dom in scores:
            for k, v in scores[dom].items():
                res[f"ood_auroc_{dom}_{k}"] = uncertainty.ood_auroc(scores["in"][k], v)
            res[f"ood_auroc_{dom}"] = res[f"ood_auroc_{dom}_entropy"]
    res.update(stability(model, data["in"], args.sigmas, args.batch_size, seed))
    res["stability"] = res[f"stability_{args.stability_sigma:g}"]
    return res


def run_cell(args, router: str, seed: int, data: dict, letters, overheads) -> dict[str, Any]:
    """Imports, retrofits (if the router has something to fit) and scores one router x seed."""
    cell = pathlib.Path(args.workdir) / router / f"seed{seed}"
    done = cell / "metrics.json"
    if done.exists():
        return workdir_io.read_json(done, "cell")
    t0 = time.time()
    mesh = _mesh(args.mesh)
    overrides = None if router == "det" else {"mlp_type": f"vmoer_{router}"}
    model, info = load_hf(args.checkpoint, dtype=args.dtype, mesh=mesh, seed=seed,
                          expert_axis="expert" if mesh is not None and "expert" in mesh.shape
                          else None, overrides=overrides)
    trainable = routers.RETROFIT_TRAINABLE[router]
    if trainable is not None:
        train, n = data["train"], len(data["train"]["answers"])

        def batches(step: int) -> dict[str, np.ndarray]:
            idx = np.random.default_rng([seed, step]).choice(n, args.batch_size)
            return {"ids": train["ids"][idx], "position": train["position"][idx],
                    "choice_ids": np.tile(letters, (len(idx), 1)), "label": train["answers"][idx]}

        retrofit(model, batches, cell, RetrofitConfig(steps=args.steps, lr=args.lr,
                                                      checkpoint_every=args.checkpoint_every),
                 trainable=trainable)
    res = {"router": router, "seed": seed, **evaluate(model, data, letters, args, seed),
           **{f"flops_{m}_pct": overheads[router][f"{m}_pct"] for m in ("train", "infer")},
           "param_gib_per_device": info.param_bytes_per_device / 2**30,
           "wall_s": time.time() - t0}
    cell.mkdir(parents=True, exist_ok=True)
    workdir_io.write_text(done, json.dumps(res, indent=1))
    return res


def _mesh(spec: str) -> jax.sharding.Mesh | None:
    """'fsdp=8' or 'fsdp=2,expert=4' -> a Mesh over the local devices ('' = one device)."""
    if not spec:
        return None
    axes = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    if "fsdp" not in axes or int(np.prod(list(axes.values()))) != jax.device_count():
        raise ValueError(f"--mesh: {spec!r} needs an fsdp axis and {jax.device_count()} devices")
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(tuple(axes.values())), tuple(axes))


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("checkpoint", "train", "test", "workdir"):
        ap.add_argument(f"--{name}", required=True)
    ap.add_argument("--near", default="", help="PATH:FORMAT[,PATH:FORMAT] near-domain OOD")
    ap.add_argument("--far", default="", help="PATH:FORMAT[,PATH:FORMAT] far-domain OOD")
    ap.add_argument("--routers", default="det,mfvr,fcvr,vtsr")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--samples", type=int, default=8, help="stochastic passes (MI)")
    ap.add_argument("--sigmas", default="0.001,0.005,0.01,0.02,0.05")
    ap.add_argument("--stability-sigma", type=float, default=0.01)
    ap.add_argument("--max-questions", type=int, default=0, help="per split (0 = all)")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--mesh", default="")
    args = ap.parse_args(argv)
    args.sigmas = sorted({float(s) for s in args.sigmas.split(",")} | {args.stability_sigma})
    names = [routers.canonical(r) for r in args.routers.split(",") if r]
    tok = load_tokenizer(args.checkpoint)
    if tok is None:
        raise ValueError(f"--checkpoint: no tokenizer.json in {args.checkpoint!r}")
    train = load_split(args.train, "train", None, args.max_questions)
    k = train.n_options
    data = {"train": encode(train, tok, args.max_len)}
    dropped = {"train": train.n_dropped}  # items with another option count than train's K
    for dom, spec in (("in", args.test), ("near", args.near), ("far", args.far)):
        if spec:
            ds = load_split(spec, dom, k, args.max_questions)
            data[dom], dropped[dom] = encode(ds, tok, args.max_len), ds.n_dropped
    letters = letter_ids(tok, k)
    cfg = decoder_config(read_config(args.checkpoint))
    shape = flops.LayerShape("checkpoint", cfg.d_model, cfg.n_experts, cfg.top_k,
                             cfg.expert_hidden, "swiglu", n_layers=len(cfg.moe_layers))
    overheads = flops.router_overheads(shape, tuple(names))
    per_run: dict[str, dict[int, dict]] = {}
    for r in names:
        for s in (int(x) for x in args.seeds.split(",")):
            per_run.setdefault(r, {})[s] = run_cell(args, r, s, data, letters, overheads)
    table = vmoer_lm_eval.summarize(per_run)
    out = pathlib.Path(args.workdir)
    vmoer_lm_eval.write_csv(table, names, out / "vmoer.csv")
    md = vmoer_lm_eval.to_markdown(table, names)
    workdir_io.write_text(out / "table.md", md + "\n")
    workdir_io.write_text(out / "results.json", json.dumps(
        {"args": vars(args), "per_run": per_run, "table": table, "n_options": k,
         "n_dropped_items": dropped}, indent=1, default=float))
    print(md)
    return {"per_run": per_run, "table": table, "markdown": md}


if __name__ == "__main__":
    main()
