"""VMoER on a language model, scored on multiple-choice QA (Li & Wicker, arXiv:2603.09453, Sec. 5).

    out = run(cfg, workdir)          # cfg: configs/vmoer_lm.py; writes workdir/tables/vmoer.csv

Per seed: an MoE decoder (`routecal.models.decoder`) is pretrained on the embedded stdlib corpus
(next-token loss) and fine-tuned on the embedded continuation MCQA (`routecal.data.mcqa`: choose
the true next bytes of a context among 4; option scores by `experiment.scoring`: the answer
letter's logit restricted to A-D, or the length-normalised option log-likelihood, see
`vmoer_lm_data.py`). `det` is trained once per seed and every `*_retrofit` router is fitted on
it (the default: one shared base model per seed): the router copies the fine-tuned `det` model
(`vmoer.retrofit_from`) and trains only its routing posterior (`routers.RETROFIT_TRAINABLE`,
optax through `nnx.Optimizer(wrt=...)`) on the MCQA train split; beta is chosen on the calib
split from `experiment.beta_grid`, ensemble members are fitted one by one and SWAG collects the
router weights' moments (`vmoer_lm_fit.py`); fixed_temp has nothing to fit and is evaluated as
copied. Routers without the suffix are trained from scratch (both phases). Evaluation is in
`vmoer_lm_eval.py`; MCQA sets: in-domain (held-out stdlib modules), near (Lib/test), far (pydoc
prose), all built deterministically from `data.mcqa_seed`.

Letters: B batch, T tokens, V vocabulary, K options.
"""

from __future__ import annotations

import functools
import json
import time
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from routecal.data.text import ByteTokenizer
from routecal.files import workdir as workdir_io
from routecal.models import decoder, routers, vmoer
from routecal.models.decoder_config import DecoderConfig
from routecal.study.vmoer_lm_data import (
    DOMAINS,
    build_data,
    check_scoring,
    noise_group,
    option_outputs,
    option_scores,
    take,
)
from routecal.training import optim

__all__ = ["DOMAINS", "build_data", "fit", "make_model", "model_config", "run", "train_router"]


# ----------------------------------------------------------------------------------------------
# Models and steps
# ----------------------------------------------------------------------------------------------


def model_config(cfg: ml_collections.ConfigDict, router: str, max_len: int) -> DecoderConfig:
    """The decoder config with the MoE layers routed by `router` (a registry name)."""
    name = routers.canonical(router)
    mlp_type = "moe" if name == "det" else f"vmoer_{name}"
    d = cfg.model.to_dict()
    d["mlp_type"] = mlp_type
    return DecoderConfig.from_config(d, vocab_size=ByteTokenizer.vocab_size, max_len=max_len)


def make_model(cfg: ml_collections.ConfigDict, router: str, seed: int, max_len: int):
    mcfg = model_config(cfg, router, max_len)
    return decoder.Decoder(mcfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1, router=seed + 2))


@functools.lru_cache(maxsize=16)
def _steps(trainable: str, pad: int):
    """Jit-compiled LM and MCQA train steps for one trainable-parameter selection (cached, so
    one compile per model structure is reused across seeds)."""
    wrt = optim.trainable_filter(trainable)

    def _update(model, optimizer, loss_fn):
        grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
        (loss, task), grads = grad_fn(model)
        optimizer.update(model, grads)
        return loss, task

    @nnx.jit
    def lm_step(model, optimizer, rows_BxT1):
        def loss_fn(m):
            out = m(rows_BxT1[:, :-1], train=True)
            tgt = rows_BxT1[:, 1:]
            mask = (tgt != pad).astype(jnp.float32)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, tgt)
            ce = jnp.sum(ce * mask) / jnp.maximum(jnp.sum(mask), 1.0)
            return ce + out.aux_loss, ce

        return _update(model, optimizer, loss_fn)

    @nnx.jit
    def mcqa_step(model, optimizer, batch, letters_K):
        def loss_fn(m):
            outs, out = option_outputs(m, batch, train=True)
            scores_BxK = option_scores(outs, letters_K)
            ce = optax.softmax_cross_entropy_with_integer_labels(scores_BxK, batch["answers"])
            return ce.mean() + out.aux_loss, ce.mean()

        return _update(model, optimizer, loss_fn)

    return lm_step, mcqa_step


def _tx(
    tcfg: ml_collections.ConfigDict, steps: int, lr: float, end_lr_fraction: float = 0.0
) -> optax.GradientTransformation:
    return optim.make_tx(
        ml_collections.ConfigDict(
            dict(
                steps=steps,
                warmup=min(int(tcfg.warmup), max(steps // 10, 1)),
                lr=lr,
                weight_decay=float(tcfg.weight_decay),
                grad_clip=float(tcfg.grad_clip),
                end_lr_fraction=end_lr_fraction,
            )
        )
    )


def fit(
    model: nnx.Module,
    data: dict[str, Any],
    tcfg: ml_collections.ConfigDict,
    *,
    phase: str,
    steps: int,
    lr: float,
    trainable: str,
    seed: int,
    on_step: Any = None,
    constant_lr: bool = False,
) -> list[float]:
    """Trains `model` in place for `steps` steps of `phase` ("lm" or "mcqa"); returns the task
    losses (logged every step). Batches are drawn with numpy from `seed`. MCQA steps route an
    item's option sequences with one draw (`vmoer.set_common_noise`). `on_step(i)` runs after
    step i (e.g. SWAG collection); `constant_lr` keeps the peak rate after warm-up."""
    if steps <= 0:
        return []
    vmoer.set_common_noise(model, noise_group(data) if phase == "mcqa" else 1)
    lm_step, mcqa_step = _steps(trainable, int(data["tokenizer"].pad))
    tx = _tx(tcfg, steps, lr, end_lr_fraction=1.0 if constant_lr else 0.0)
    optimizer = nnx.Optimizer(model, tx, wrt=optim.trainable_filter(trainable))
    rng = np.random.default_rng(seed)
    bs = int(tcfg.batch_size if phase == "lm" else tcfg.get("mcqa_batch_size", tcfg.batch_size))
    losses = []
    for _ in range(steps):
        if phase == "lm":
            rows = data["lm"][rng.integers(0, len(data["lm"]), bs)]
            loss, task = lm_step(model, optimizer, jnp.asarray(rows))
        else:
            train = data["mcqa"]["train"]
            batch = take(train, rng.integers(0, len(train["answers"]), bs))
            loss, task = mcqa_step(model, optimizer, batch, data["letters"])
        losses.append(float(task))
        if on_step is not None:
            on_step(len(losses) - 1)
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"{phase}: non-finite training loss {losses[-5:]}")
    return losses


def seq_limit(cfg: ml_collections.ConfigDict) -> int:
    return max(int(cfg.data.lm_seq_len), int(cfg.data.max_prompt_len))


def train_router(cfg, data, router: str, seed: int, det_model=None) -> tuple[nnx.Module, dict]:
    """One trained model: from scratch (LM + MCQA with `router`) or, for "<name>_retrofit", the
    fine-tuned `det_model` with only the routing posterior of <name> fitted on MCQA
    (`vmoer_lm_fit.retrofit`)."""
    from routecal.study import vmoer_lm_fit

    t0 = time.perf_counter()
    t = cfg.train
    base, is_retrofit = routers.split_method(router)
    if is_retrofit:
        if det_model is None:
            raise ValueError(f"experiment.routers: {router} needs 'det' trained first")
        model, log = vmoer_lm_fit.retrofit(cfg, data, base, seed, det_model)
    else:
        model = make_model(cfg, base, seed, seq_limit(cfg))
        log: dict[str, Any] = {}
        log["lm"] = fit(
            model, data, t, phase="lm", steps=int(t.pretrain_steps), lr=float(t.lr),
            trainable="all", seed=seed,
        )  # fmt: skip
        collect = vmoer_lm_fit.swag_hook(model, int(t.finetune_steps)) if base == "swag" else None
        log["mcqa"] = fit(
            model, data, t, phase="mcqa", steps=int(t.finetune_steps), lr=float(t.finetune_lr),
            trainable="all", seed=seed + 1, on_step=collect.hook if collect else None,
        )  # fmt: skip
        if collect is not None:
            collect.install()
    log["time_s"] = time.perf_counter() - t0
    return model, log


# ----------------------------------------------------------------------------------------------
# The experiment
# ----------------------------------------------------------------------------------------------


def run(cfg: ml_collections.ConfigDict, workdir: str) -> dict[str, Any]:
    """Trains and evaluates every (router, seed) of `cfg.experiment` under its option scoring
    (`experiment.scoring`, `vmoer_lm_data.SCORINGS`); writes
    `workdir/vmoer_lm_results.json` and `workdir/tables/vmoer.csv` (one row per router).

    Each finished seed is saved as `workdir/seed<s>.json` and loaded instead of retrained, so
    seeds can run in parallel processes (`experiment.seeds=(s,)` each) and a last call with all
    seeds only assembles the table (`experiment.assemble_only=True` also tables partial seeds).
    The file is rewritten after every router; a seed found incomplete is retrained from `det`."""
    import pathlib

    from routecal.study import vmoer_lm_eval as ev

    e = cfg.experiment
    scoring = check_scoring(str(e.get("scoring", "letter")))
    names = list(e.routers)
    if "det" not in names:
        raise ValueError("experiment.routers: must include 'det' (the baseline)")
    for n in names:
        routers.split_method(n)  # ValueError naming the new name of an old one
    wd = pathlib.Path(workdir)
    (wd / "tables").mkdir(parents=True, exist_ok=True)
    t0, c0 = time.perf_counter(), time.process_time()
    data = None if e.get("assemble_only", False) else build_data(cfg.data, scoring)
    per_run: dict[str, dict[int, dict[str, float]]] = {n: {} for n in names}
    for seed in e.seeds:
        seed_file = wd / f"seed{int(seed)}.json"
        done = workdir_io.read_json(seed_file, "vmoer_lm") if seed_file.exists() else {}
        if set(done) >= set(names) or e.get("assemble_only", False):
            # finished earlier (or by a parallel process), or only assembling: no training
            for name in names:
                if name in done:
                    per_run[name][int(seed)] = done[name]
            continue
        det, runs = None, {}
        for name in ["det", *[n for n in names if n != "det"]]:
            w0, p0 = time.perf_counter(), time.process_time()
            model, log = train_router(cfg, data, name, int(seed), det)
            if name == "det":
                det = model
            res = ev.evaluate(model, data, e, seed=int(seed))
            res["train_time_s"] = log["time_s"]
            # train + eval of this router (compilation included: first seed of a process)
            res["wall_s"] = time.perf_counter() - w0
            res["cpu_s"] = time.process_time() - p0
            res["final_task_loss"] = float(np.mean(log["mcqa"][-10:])) if log.get("mcqa") else None
            res.update({k: v for k, v in log.items() if k not in ("lm", "mcqa", "time_s")})
            runs[name] = per_run[name][int(seed)] = res
            print(f"[vmoer_lm] seed {seed} {name}: " + ev.one_line(res), flush=True)
            workdir_io.write_text(seed_file, json.dumps(runs, default=float) + "\n")  # atomic
    flops = ev.flop_overheads(cfg, names)
    for name in names:
        for r in per_run[name].values():
            r.update(flops[name])
    table = ev.summarize(per_run)
    ev.write_csv(table, names, wd / "tables" / "vmoer.csv")
    out = {
        "per_run": per_run,
        "table": table,
        "markdown": ev.to_markdown(table, names),
        "paper_claims": ev.PAPER_CLAIMS,
        "scoring": scoring,
        "seeds": [int(x) for x in e.seeds],
        "time_s": time.perf_counter() - t0,  # this call (an assembling call trains nothing)
        "cpu_time_s": time.process_time() - c0,
        # summed over every (router, seed) run, whichever process trained it
        "runs_wall_s": sum(r.get("wall_s", 0.0) for v in per_run.values() for r in v.values()),
        "runs_cpu_s": sum(r.get("cpu_s", 0.0) for v in per_run.values() for r in v.values()),
        "config": json.loads(cfg.to_json_best_effort()),
    }
    workdir_io.write_text(wd / "vmoer_lm_results.json",
                          json.dumps(out, indent=2, default=float) + "\n")
    return out
