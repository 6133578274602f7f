"""Multiple-choice QA with an MoE decoder: option scores, fitting and batched prediction.

    data = routecal.data.mcqa.build_data(cfg.data, "loglik")  # corpus LM rows + MCQA tensors
    model = make_model(cfg, "mfvr", seed, seq_limit(cfg))      # a Decoder routed by `mfvr`
    losses = fit(model, data, cfg.train, phase="mcqa", steps=200, lr=1e-3, trainable="all", seed=0)
    pred = predict(model, data["mcqa"]["in"], batch_size=64)   # option outputs + MoE traces
    probs_NxK = option_probs(pred, data["letters"])

Two scorings of an item (`routecal.stats.mcqa`; `experiment.scoring`):
  letter   the prompt "context / A. opt / ... / Answer: " (`mcqa.format_prompt`); score_k = the
           next-token logit of letter k after the prompt restricted to the K letters (Li &
           Wicker, arXiv:2603.09453, Sec. 5). Prompts are left-padded [N, T] and read at the last
           position, or right-padded with a "position" [N] (an imported checkpoint without an
           attention mask) and read there;
  loglik   K sequences per item, context + option_k, right-padded to [N, K, T] with a 0/1 mask
           [N, K, T - 1] over the option's next-token targets; score_k = the option's summed
           token log-likelihood divided by its length (lm-evaluation-harness "acc_norm").
The option probabilities are softmax(score); fine-tuning minimises their cross entropy with the
answer (the LM loss is not added). MCQA steps and evaluation route an item's K option sequences
with one draw (common random numbers, `vmoer.set_common_noise` with `noise_group`).

Letters: N items, B batch, K options, T tokens, V vocabulary.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from routecal.data import mcqa as mcqa_data
from routecal.data.text import ByteTokenizer
from routecal.models import decoder, routers, vmoer
from routecal.models.decoder_config import DecoderConfig
from routecal.stats import mcqa, uncertainty
from routecal.training import optim

# ----------------------------------------------------------------------------------------------
# Option scores (jittable)
# ----------------------------------------------------------------------------------------------


def option_logprob_sums(
    logits_MxTxV: jax.Array, ids_MxT: jax.Array, mask_MxT1: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Summed log p(ids[t + 1] | ids[:t + 1]) over the masked targets, and the mask's count.

    Returns:
      sums [M] (<= 0) and lengths [M] (the number of option tokens).
    """
    logp = jax.nn.log_softmax(logits_MxTxV[:, :-1].astype(jnp.float32), axis=-1)
    tok = jnp.take_along_axis(logp, ids_MxT[:, 1:, None], axis=-1)[..., 0]
    return jnp.sum(tok * mask_MxT1, axis=-1), jnp.sum(mask_MxT1, axis=-1)


def _merge_options(x: jax.Array, b: int) -> jax.Array:
    """[B * K, T, ...] -> [B, K * T, ...] (an item's tokens over all its option sequences)."""
    return x.reshape(b, -1, *x.shape[2:])


def option_outputs(
    model: Any, batch: dict[str, jax.Array], *, train: bool = False, return_traces: bool = False
) -> tuple[dict[str, jax.Array], Any]:
    """One forward pass over a batch of items.

    Args:
      batch: {"ids" [B, T]} (letter: left-padded, read at the last position; with "position"
        [B] right-padded, read there) or {"ids" [B, K, T], "mask" [B, K, T - 1]} (loglik); any
        other keys (answers, token_mask) are ignored.

    Returns:
      ({"last_logits" [B, V]} or {"sums" [B, K], "lengths" [B, K]}, the DecoderOutput), with the
      traces' per-token arrays reshaped to [B, K * T, ...] for loglik, so token means are per item.
    """
    ids = batch["ids"]
    if "mask" not in batch:
        out = model(ids, train=train, return_traces=return_traces)
        if "position" in batch:  # right-padded prompts, read at their own last token
            return {"last_logits": out.logits[jnp.arange(ids.shape[0]), batch["position"]]}, out
        return {"last_logits": out.logits[:, -1, :]}, out
    b, k, t = ids.shape
    flat = ids.reshape(b * k, t)
    out = model(flat, train=train, return_traces=return_traces)
    sums, lengths = option_logprob_sums(out.logits, flat, batch["mask"].reshape(b * k, t - 1))
    if return_traces:
        mlp = [
            {n: _merge_options(v, b) if jnp.ndim(v) >= 2 else v for n, v in tr.items()}
            for tr in out.traces["mlp"]
        ]
        out = out.replace(traces={**out.traces, "mlp": mlp})
    return {"sums": sums.reshape(b, k), "lengths": lengths.reshape(b, k)}, out


def option_scores(outs: dict[str, jax.Array], letters_K: jax.Array) -> jax.Array:
    """Option logits [B, K] whose softmax is the option distribution (letter or loglik)."""
    if "last_logits" in outs:
        return outs["last_logits"][:, letters_K]
    return outs["sums"] / jnp.maximum(outs["lengths"], 1.0)


def noise_group(data: dict[str, Any]) -> int:
    """Rows sharing one routing draw (common random numbers): K options under loglik, else 1."""
    return int(data["mcqa"]["train"]["ids"].shape[1]) if data["scoring"] == "loglik" else 1


# ----------------------------------------------------------------------------------------------
# The decoder and its fit
# ----------------------------------------------------------------------------------------------


def with_vmoer(cfg: ml_collections.ConfigDict, **options: Any) -> ml_collections.ConfigDict:
    """A copy of `cfg` with `model.vmoer` options replaced."""
    c = ml_collections.ConfigDict(cfg.to_dict())
    for k, v in options.items():
        c.model.vmoer[k] = v
    return c


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


def seq_limit(cfg: ml_collections.ConfigDict) -> int:
    return max(int(cfg.data.lm_seq_len), int(cfg.data.max_prompt_len))


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
    stop: Any = None,
) -> list[float]:
    """Trains `model` in place for `steps` steps of `phase` ("lm" or "mcqa"); returns the task
    losses (logged every step). Batches are drawn with numpy from `seed`. MCQA steps route an
    item's option sequences with one draw (`vmoer.set_common_noise`). `on_step(i)` runs after
    step i (e.g. SWAG collection); `constant_lr` keeps the peak rate after warm-up; `stop(losses)`
    (e.g. `baselines.Plateau.stop`) ends the fit early when it returns True."""
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
            batch = mcqa_data.take(train, rng.integers(0, len(train["answers"]), bs))
            loss, task = mcqa_step(model, optimizer, batch, data["letters"])
        losses.append(float(task))
        if on_step is not None:
            on_step(len(losses) - 1)
        if stop is not None and stop(losses):
            break
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"{phase}: non-finite training loss {losses[-5:]}")
    return losses


# ----------------------------------------------------------------------------------------------
# Prediction
# ----------------------------------------------------------------------------------------------


# Per-token traces the MoE layers emit (`moe.MoEMLP` and every router's RouterOutput.trace).
KNOWN_TRACES = ("router_probs", "experts", "gates", "dropped", "router_sigma",
                "router_logit_var", "temperature")  # fmt: skip
EVAL_TRACES = ("experts", "router_probs", "router_logit_var")


def keep_traces(traces: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The `keys` of every MoE layer's trace (a key a router does not emit is left out);
    ValueError for a key no MoE layer or router emits (a misspelt key never silently drops a
    score)."""
    unknown = sorted(set(keys) - set(KNOWN_TRACES))
    if unknown:
        raise ValueError(f"trace keys: unknown {unknown}; MoE layers emit {KNOWN_TRACES}")
    return [{k: t[k] for k in keys if k in t} for t in traces]


@nnx.jit
def _forward(model, batch):
    outs, out = option_outputs(model, batch, return_traces=True)
    return outs, keep_traces(out.traces["mlp"], EVAL_TRACES)


def inputs(items: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model inputs of an MCQA split: {"ids"} (+ "mask" for loglik, "position" for
    right-padded prompts); a bare [N, T] array is read as letter prompts."""
    if not isinstance(items, dict):
        return {"ids": np.asarray(items)}
    return {k: v for k, v in items.items() if k in ("ids", "mask", "position")}


def predict(model: nnx.Module, items: Any, batch_size: int) -> dict[str, Any]:
    """Per-item option outputs (`option_outputs`: last-position logits [N, V], or
    option log-likelihood sums and lengths [N, K]) and per-MoE-layer traces (lists of
    [N, T, ...]; [N, K * T, ...] for loglik) in fixed-size batches (the last one padded by
    repetition, so one compile serves every batch)."""
    batch_all = inputs(items)
    n = len(batch_all["ids"])
    outs, traces = [], []
    for i in range(0, n, batch_size):
        chunk = {k: v[i : i + batch_size] for k, v in batch_all.items()}
        m = len(chunk["ids"])
        if m < batch_size:
            chunk = {
                k: np.concatenate([v, np.repeat(v[-1:], batch_size - m, 0)])
                for k, v in chunk.items()
            }
        o, tr = _forward(model, {k: jnp.asarray(v) for k, v in chunk.items()})
        outs.append({k: np.asarray(v)[:m] for k, v in o.items()})
        traces.append([{k: np.asarray(v)[:m] for k, v in t.items()} for t in tr])
    layers = [
        {k: np.concatenate([b[j][k] for b in traces]) for k in traces[0][j]}
        for j in range(len(traces[0]))
    ]
    return {"outs": {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, "layers": layers}


def option_probs(pred: dict[str, Any], letters: np.ndarray) -> np.ndarray:
    """Option probabilities [N, K] under the scoring the outputs came from."""
    o = pred["outs"]
    if "last_logits" in o:
        return mcqa.letter_option_probs(o["last_logits"], letters)
    return mcqa.loglik_option_probs(o["sums"], o["lengths"])


def sampled_probs(model: nnx.Module, items: Any, letters: Any, n: int, bs: int) -> np.ndarray | None:
    """[S, N, K] option probabilities of S passes with routing sampled in each (a clone of
    `model`); None for a model without a stochastic router."""
    m = nnx.clone(model)
    if vmoer.set_router_sampling(m, True) == 0:
        return None
    return np.stack([option_probs(predict(m, items, bs), letters) for _ in range(n)])


def calib_nll(model: nnx.Module, split: dict[str, np.ndarray], letters: Any, batch_size: int,
              group: int = 1) -> float:
    """NLL of the option distribution on a calibration split (selects beta; never a test split);
    `group`: rows per routing draw (`noise_group`)."""
    vmoer.set_common_noise(model, group)
    probs = option_probs(predict(nnx.clone(model), inputs(split), batch_size), letters)
    return float(mcqa.mcqa_metrics(probs, split["answers"])["nll"])


def evaluate(model: nnx.Module, splits: dict[str, dict[str, np.ndarray]], letters: Any,
             e: ml_collections.ConfigDict, *, seed: int, group: int = 1) -> dict[str, Any]:
    """The VMoER metrics of one model on MCQA splits {"in", "near"?, "far"?} (each {"ids",
    "answers"} + "mask" / "position" / "token_mask" [N, T], the real tokens' weights):
      accuracy, ece, mce, nll, brier     in-domain (`stats.mcqa.mcqa_metrics`, `e.n_bins` bins);
                                         accuracy_<domain> for near / far
      ood_auroc_<domain>_<score>         in vs near / far for every `e.ood_scores` name
                                         (`uncertainty.moe_ood_scores`; mi over `e.mc_samples`
                                         sampled passes), ood_auroc_<domain> = entropy's
      stability_<sigma>, _layers_<sigma> `vmoer.stability` (`e.stability_protocol`, `e.sigmas`)
                                         on the first `e.stability_items` in-domain items (0:
                                         all); stability = the one at `e.stability_sigma`.
    `group`: rows per routing draw (K options under loglik, `noise_group`)."""
    bs = int(e.eval_batch_size)
    vmoer.set_common_noise(model, group)
    res: dict[str, Any] = {}
    scores = {}
    for dom in (d for d in mcqa_data.DOMAINS if d in splits):
        split, items = splits[dom], inputs(splits[dom])
        pred = predict(nnx.clone(model), items, bs)
        probs = option_probs(pred, letters)
        mc = sampled_probs(model, items, letters, int(e.mc_samples), bs)
        scores[dom] = uncertainty.moe_ood_scores(tuple(e.ood_scores), probs, pred["layers"], mc,
                                                 split.get("token_mask"))  # fmt: skip
        if dom == "in":
            res.update(mcqa.mcqa_metrics(probs, split["answers"], n_bins=int(e.n_bins)))
        else:
            res[f"accuracy_{dom}"] = float(np.mean(probs.argmax(1) == split["answers"]))
    res.update(uncertainty.ood_aurocs(scores))
    n_stab = int(e.stability_items) or None  # the first items (0: all)
    stab = {k: v[:n_stab] for k, v in inputs(splits["in"]).items()}
    mask = splits["in"].get("token_mask")

    def experts_fn(m: nnx.Module) -> list[np.ndarray]:
        return [t["experts"] for t in predict(m, stab, bs)["layers"]]

    res.update(vmoer.stability(model, experts_fn, e.sigmas, seed=seed,
                               protocol=str(e.stability_protocol),
                               mask_NxT=None if mask is None else mask[:n_stab]))  # fmt: skip
    res["stability"] = res[f"stability_{float(e.stability_sigma):g}"]
    return res
