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
        --routers det,mfvr,fcvr,vtsr --steps 500 --seeds 0,1,2 [--mesh fsdp=8] [--dtype bfloat16] \
        [--vmoer beta=0.01,samples=8,init_sigma=0.3,head_hidden=64,vtsr_entropy_weight=1] \
        [--stability-protocol layer_input] [--ood-scores entropy,max_prob,mi,...]

Every VMoER option (`routecal.models.routers.common.VMoERConfig`, without "vmoer_": beta, samples,
init_sigma, head_hidden, the VTSR regulariser weights, ...) is set by --vmoer key=value pairs;
defaults are the library's. The router names are the one vocabulary (`routecal.models.routers`;
"logit"/"temp" raise naming "mfvr"/"vtsr"). Stability follows the paper by default (noise at one
layer's input hidden state, that layer's Jaccard; `routecal.study.vmoer_stability`), the per-layer
curve in stability_layers_<sigma>; every OOD score named by --ood-scores is in the table for
every router (router_logit_variance from the routers' `router_logit_var` trace; 0 for routers
whose logits are deterministic). SWAG collects its moments over the retrofit
(`vmoer_swag_start` onwards). The moments are NOT checkpointed during the retrofit: a SWAG cell
stopped mid-retrofit resumes its weights but restarts its moments from the resumed step
(`swag_n` in metrics.json says how many iterates entered; none collected raises); they are
saved once the retrofit has finished (<cell>/swag_moments.npz) and read back by a rerun. ensemble: each of the `vmoer_ensemble` members is fitted alone
(`routers.baselines.fit_members`: the imported router plus N(0, s^2), its own batch order,
`--steps` steps, checkpoints under <cell>/member<m>/, losses in metrics.json `members`), as the
LM study does; the routers' per-step losses are in metrics.json `losses`. With --calib PATH:FORMAT, mfvr / lowrank / fcvr / vtsr are fitted once per
--beta-grid value and the value with the lowest calib NLL is kept (the test splits never choose).

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
from routecal.models.pretrained.retrofit import METRICS_FILE, RetrofitConfig, retrofit
from routecal.models.routers import baselines, common, swag
from routecal.stats import mcqa
from routecal.study import vmoer_decoder_eval, vmoer_decoder_fit, vmoer_stability


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
    return (out.logits[jnp.arange(ids.shape[0]), pos],
            vmoer_decoder_eval.keep_traces(out.traces["mlp"], vmoer_decoder_eval.EVAL_TRACES))


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


def evaluate(model, data: dict, letters: np.ndarray, args, seed: int) -> dict[str, Any]:
    """The metrics of `vmoer_decoder_eval` (same names, so its table functions apply)."""
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
        s = vmoer_decoder_eval.ood_scores(args.ood_scores, probs, pred["layers"], mc, d["mask"])
        scores[dom] = s
        if dom == "in":
            res.update(mcqa.mcqa_metrics(probs, d["answers"]))
        else:
            res[f"accuracy_{dom}"] = float(np.mean(probs.argmax(1) == d["answers"]))
    res.update(vmoer_decoder_eval.ood_aurocs(scores))

    def experts_fn(m: nnx.Module) -> list[np.ndarray]:
        return [t["experts"] for t in predict(m, data["in"], args.batch_size)["layers"]]

    res.update(vmoer_stability.stability(model, experts_fn, args.sigmas, seed=seed,
                                         protocol=args.stability_protocol,
                                         mask_NxT=data["in"]["mask"]))
    res["stability"] = res[f"stability_{args.stability_sigma:g}"]
    return res


def _import(args, router: str, seed: int, opts: dict) -> tuple[nnx.Module, Any]:
    """The checkpoint imported with router `router` and VMoER options `opts` -> (model, info)."""
    mesh = _mesh(args.mesh)
    overrides = {"vmoer": tuple(sorted(opts.items()))}
    if router != "det":
        overrides["mlp_type"] = f"vmoer_{router}"
    return load_hf(args.checkpoint, dtype=args.dtype, mesh=mesh, seed=seed,
                   expert_axis="expert" if mesh is not None and "expert" in mesh.shape
                   else None, overrides=overrides)


def _train(args, model, data: dict, letters, cell: pathlib.Path, trainable: str,
           batch_seed: list[int], on_step: Any = None) -> list[float]:
    """Retrofits the `trainable` selection of `model` in place (posterior checkpoints under
    `cell`, batches from numpy seed (*batch_seed, step)) -> its per-step cross-entropy."""
    train, n = data["train"], len(data["train"]["answers"])

    def batches(step: int) -> dict[str, np.ndarray]:
        idx = np.random.default_rng([*batch_seed, step]).choice(n, args.batch_size)
        return {"ids": train["ids"][idx], "position": train["position"][idx],
                "choice_ids": np.tile(letters, (len(idx), 1)), "label": train["answers"][idx]}

    retrofit(model, batches, cell, RetrofitConfig(steps=args.steps, lr=args.lr,
                                                  checkpoint_every=args.checkpoint_every),
             trainable=trainable, on_step=on_step)
    records, _ = workdir_io.read_jsonl(cell / METRICS_FILE, "retrofit metrics")
    return [float(r["ce"]) for r in records]


def _fit(args, router: str, seed: int, data: dict, letters, opts: dict, cell: pathlib.Path):
    """Imports the checkpoint with router `router` and VMoER options `opts` and retrofits it
    (if the router has something to fit; posterior checkpoints under `cell`) -> (model, info,
    log). ensemble: every member fitted alone (`routers.baselines.fit_members`: det router plus
    N(0, s^2), its own batch order, under `cell/member<m>`), then installed; swag: moments over
    the retrofit (`routers.swag.collect_from`). The log holds the losses (`members` for the
    ensemble) and `swag_n`."""
    if router == "ensemble":
        def get(key: str) -> Any:
            return opts.get(key, common.DEFAULTS[f"vmoer_{key}"])

        kernels, members = baselines.fit_members(
            lambda: _import(args, "det", seed, opts)[0],
            lambda member, m, _: _train(args, member, data, letters, cell / f"member{m}",
                                        vmoer_decoder_fit.PROJ, [seed, 100 + m]),
            int(get("ensemble")), float(get("ensemble_perturb")), seed,
            baselines.Plateau(args.steps, args.steps, 1),  # fixed --steps (resumable cells)
        )  # fmt: skip
        model, info = _import(args, router, seed, opts)
        baselines.install_members(model, kernels)
        return model, info, {"members": members}
    model, info = _import(args, router, seed, opts)
    trainable = routers.RETROFIT_TRAINABLE[router]
    log: dict[str, Any] = {}
    if trainable is not None:
        collector = swag.collect_from(model, args.steps) if router == "swag" else None
        log["losses"] = _train(args, model, data, letters, cell, trainable, [seed],
                               collector.hook if collector is not None else None)
        if collector is not None:
            saved = cell / "swag_moments.npz"
            if collector.states[0].n == 0 and saved.exists():  # retrofit had finished before
                with np.load(saved) as z:
                    collector.states = [swag.SwagState(int(z[f"{i}/n"]), z[f"{i}/mean"],
                                                       z[f"{i}/sq_mean"], z[f"{i}/dev"])
                                        for i in range(len(collector.states))]  # fmt: skip
            collector.install()  # ValueError if no iterate was collected
            workdir_io.save_npz(saved, {f"{i}/{k}": v for i, st in enumerate(collector.states)
                                        for k, v in st._asdict().items()})  # fmt: skip
            log["swag_n"] = collector.states[0].n
    return model, info, log


def run_cell(args, router: str, seed: int, data: dict, letters, overheads) -> dict[str, Any]:
    """Imports, retrofits (if the router has something to fit) and scores one router x seed.
    Routers with a beta (`vmoer_decoder_fit.BETA_ROUTERS`) are fitted once per --beta-grid value when
    a --calib split is given; the value with the lowest calib NLL is kept and recorded."""
    cell = pathlib.Path(args.workdir) / router / f"seed{seed}"
    done = cell / "metrics.json"
    if done.exists():
        return workdir_io.read_json(done, "cell")
    t0 = time.time()
    chosen: dict[str, Any] = {}
    if router in vmoer_decoder_fit.BETA_ROUTERS and args.beta_grid and "calib" in data:
        def fit_one(beta: float) -> tuple[float, tuple]:
            fitted = _fit(args, router, seed, data, letters, {**args.vmoer, "beta": beta},
                          cell / f"beta{beta:g}")
            logits = predict(fitted[0], data["calib"], args.batch_size)["logits"]
            probs = mcqa.letter_option_probs(logits, letters)
            return mcqa.mcqa_metrics(probs, data["calib"]["answers"])["nll"], fitted

        (model, info, log), chosen = vmoer_decoder_fit.choose_beta(args.beta_grid, fit_one)
    else:
        model, info, log = _fit(args, router, seed, data, letters, args.vmoer, cell)
    res = {"router": router, "seed": seed, **evaluate(model, data, letters, args, seed), **chosen,
           **log,
           **{f"flops_{m}_pct": overheads[router][f"{m}_pct"] for m in ("train", "infer")},
           "param_gib_per_device": info.param_bytes_per_device / 2**30,
           "wall_s": time.time() - t0}
    cell.mkdir(parents=True, exist_ok=True)
    workdir_io.write_text(done, json.dumps(res, indent=1))
    return res


def parse_vmoer(spec: str) -> dict[str, Any]:
    """'beta=0.01,samples=8,vtsr_reg=entropy' -> {"beta": 0.01, "samples": 8, ...} (values typed
    like the option's default); ValueError naming an unknown option or a bad pair."""
    out: dict[str, Any] = {}
    for pair in (p for p in spec.split(",") if p):
        key, eq, raw = pair.partition("=")
        name = f"vmoer_{key.removeprefix('vmoer_')}"
        if not eq or name not in common.DEFAULTS:
            raise ValueError(f"--vmoer: expected key=value with key in "
                             f"{sorted(k.removeprefix('vmoer_') for k in common.DEFAULTS)}, "
                             f"got {pair!r}")
        default = common.DEFAULTS[name]
        if isinstance(default, bool):
            out[name.removeprefix("vmoer_")] = raw.lower() in ("1", "true", "yes")
        else:
            out[name.removeprefix("vmoer_")] = type(default)(raw)
    return out


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
    ap.add_argument("--vmoer", default="", help="VMoER options key=value[,key=value] "
                    "(routecal.models.routers.common.VMoERConfig names without 'vmoer_')")
    ap.add_argument("--stability-protocol", default="layer_input",
                    choices=list(vmoer.STABILITY_PROTOCOLS))
    ap.add_argument("--ood-scores", default=",".join(vmoer_decoder_eval.OOD_SCORES))
    ap.add_argument("--calib", default="", help="PATH:FORMAT[,...] calibration split (beta)")
    ap.add_argument("--beta-grid", default="1e-6,1e-5,1e-4,1e-3,1e-2,1e-1",
                    help="betas tried per router on --calib (ignored without --calib)")
    args = ap.parse_args(argv)
    args.vmoer = parse_vmoer(args.vmoer)
    args.ood_scores = tuple(x for x in args.ood_scores.split(",") if x)
    args.beta_grid = [float(b) for b in args.beta_grid.split(",") if b]
    args.sigmas = sorted({float(s) for s in args.sigmas.split(",")} | {args.stability_sigma})
    names = [routers.canonical(r) for r in args.routers.split(",") if r]
    tok = load_tokenizer(args.checkpoint)
    if tok is None:
        raise ValueError(f"--checkpoint: no tokenizer.json in {args.checkpoint!r}")
    train = load_split(args.train, "train", None, args.max_questions)
    k = train.n_options
    data = {"train": encode(train, tok, args.max_len)}
    dropped = {"train": train.n_dropped}  # items with another option count than train's K
    for dom, spec in (("calib", args.calib), ("in", args.test), ("near", args.near),
                      ("far", args.far)):
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
    table = vmoer_decoder_eval.summarize(per_run)
    out = pathlib.Path(args.workdir)
    vmoer_decoder_eval.write_csv(table, names, out / "vmoer.csv")
    md = vmoer_decoder_eval.to_markdown(table, names)
    workdir_io.write_text(out / "table.md", md + "\n")
    workdir_io.write_text(out / "results.json", json.dumps(
        {"args": vars(args), "per_run": per_run, "table": table, "n_options": k,
         "n_dropped_items": dropped}, indent=1, default=float))
    print(md)
    return {"per_run": per_run, "table": table, "markdown": md}


if __name__ == "__main__":
    main()
