"""Data and option scores of the VMoER language-model experiment (`vmoer_decoder.py`).

    data = build_data(cfg.data, scoring="loglik")   # corpus LM rows + MCQA tensors per split
    outs, out = option_outputs(model, batch)         # jittable: per-option outputs, DecoderOutput
    scores_BxK = option_scores(outs, letters_K)      # the logits of the option distribution

Two scorings of an item (`routecal.stats.mcqa`; `experiment.scoring`):
  letter   the prompt "context / A. opt / ... / Answer: " (`mcqa.format_prompt`), left-padded to
           [N, T]; score_k = next-token logit of letter k after the prompt restricted to the K
           letters (Li & Wicker, arXiv:2603.09453, Sec. 5: the paper's rule);
  loglik   K sequences per item, context + option_k, right-padded to [N, K, T] with a 0/1 mask
           [N, K, T - 1] over the next-token targets that are option tokens; score_k = the
           option's summed token log-likelihood given the context divided by its length
           (lm-evaluation-harness "acc_norm"; `mcqa.loglik_option_probs`).
The option probabilities are softmax(score) in both cases; fine-tuning minimises their cross
entropy with the answer (the LM loss is not added).

Letters: N items, B batch, K options, T tokens, V vocabulary.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from routecal.data import mcqa as mcqa_data
from routecal.data.text import ByteTokenizer, make_split

DOMAINS = ("in", "near", "far")
SCORINGS = ("letter", "loglik")


def check_scoring(scoring: str) -> str:
    """`scoring` if it is one of SCORINGS, else ValueError naming it."""
    if scoring not in SCORINGS:
        raise ValueError(f"experiment.scoring: unknown scoring {scoring!r}; use one of {SCORINGS}")
    return scoring


def encode_continuations(
    contexts: Sequence[str], options: Sequence[Sequence[str]], tokenizer: Any, max_len: int
) -> tuple[np.ndarray, np.ndarray]:
    """Sequences context + option_k for every item and option.

    Returns:
      ids [N, K, T] (right-padded with the tokenizer's pad id; T the longest sequence, at most
      `max_len`: longer contexts keep their last tokens) and mask [N, K, T - 1] (float32, 1 where
      the next-token target ids[..., 1:] is an option token).
    """
    if len(contexts) != len(options):
        raise ValueError(f"options: {len(options)} option lists for {len(contexts)} contexts")
    rows = []
    for ctx, opts in zip(contexts, options, strict=True):
        c = np.asarray(tokenizer.encode(ctx.encode()), np.int32)
        item = []
        for o in opts:
            e = np.asarray(tokenizer.encode(o.encode()), np.int32)
            if not 1 <= len(e) < max_len:
                raise ValueError(f"options: an option of {len(e)} tokens needs 1..{max_len - 1}")
            item.append((c[-(max_len - len(e)) :], e))
        rows.append(item)
    t = max(len(c) + len(e) for item in rows for c, e in item)
    n, k = len(rows), len(rows[0])
    ids = np.full((n, k, t), tokenizer.pad, np.int32)
    mask = np.zeros((n, k, t - 1), np.float32)
    for i, item in enumerate(rows):
        for j, (c, e) in enumerate(item):
            ids[i, j, : len(c) + len(e)] = np.concatenate([c, e])
            mask[i, j, len(c) - 1 : len(c) + len(e) - 1] = 1.0  # targets ids[len(c):...]
    return ids, mask


def build_data(dcfg: ml_collections.ConfigDict, scoring: str = "letter") -> dict[str, Any]:
    """Corpus LM rows [N, T + 1] and the MCQA tensors of each split (train, calib, in, near, far;
    calib = the last `n_calib_items` items drawn from the training documents, held out of
    train, for choices such as beta that must never see a test split):
    {"lm", "scoring", "mcqa": {split: {"ids", "answers" [N] (+ "mask" for loglik)}},
    "letters" [K], "tokenizer"}; shapes per scoring in the module docstring."""
    from routecal.data.text import stdlib

    check_scoring(scoring)
    tok = ByteTokenizer()
    docs = {
        "train": [b for _, b in stdlib.corpus_texts("in", "train", seed=int(dcfg.corpus_seed))],
        "in": [b for _, b in stdlib.corpus_texts("in", "test", seed=int(dcfg.corpus_seed))],
        "near": [b for _, b in stdlib.corpus_texts("near")],
        "far": [b for _, b in stdlib.corpus_texts("far")],
    }
    lm = make_split(
        docs["train"], "in", tok, int(dcfg.lm_seq_len), int(dcfg.lm_max_bytes), "train"
    ).ids.astype(np.int32)
    sets = {}
    n_calib = int(dcfg.get("n_calib_items", 0))
    for i, split in enumerate(("train", *DOMAINS)):
        n = int(dcfg.n_train_items if split == "train" else dcfg.n_eval_items)
        n += n_calib if split == "train" else 0
        ds = mcqa_data.continuation_mcqa(
            docs[split],
            n_items=n,
            seed=int(dcfg.mcqa_seed) * 10 + i,
            context_len=int(dcfg.context_len),
            option_len=int(dcfg.option_len),
            domain=split,
        )
        entry: dict[str, np.ndarray] = {"answers": ds.answers.astype(np.int32)}
        if scoring == "letter":
            prompts = [mcqa_data.format_prompt(q, o) for q, o in ds.items()]
            entry["ids"] = mcqa_data.encode_prompts(prompts, tok, int(dcfg.max_prompt_len))
        else:
            entry["ids"], entry["mask"] = encode_continuations(
                ds.questions, ds.options, tok, int(dcfg.max_prompt_len)
            )
        sets[split] = entry
    if n_calib:
        train = sets["train"]
        cut = len(train["answers"]) - n_calib
        sets["calib"] = take(train, slice(cut, None))
        sets["train"] = take(train, slice(0, cut))
    letters = mcqa_data.letter_ids(tok, 4)
    return {"lm": lm, "scoring": scoring, "mcqa": sets, "letters": letters, "tokenizer": tok}


def noise_group(data: dict[str, Any]) -> int:
    """Rows sharing one routing draw (common random numbers): K options under loglik, else 1."""
    return int(data["mcqa"]["train"]["ids"].shape[1]) if data["scoring"] == "loglik" else 1


def take(entry: dict[str, np.ndarray], idx: Any) -> dict[str, np.ndarray]:
    """The items `idx` of every array of an MCQA split (leading axis N)."""
    return {k: v[idx] for k, v in entry.items()}


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
      batch: {"ids" [B, T]} (letter) or {"ids" [B, K, T], "mask" [B, K, T - 1]} (loglik); any
        other keys (answers) are ignored.

    Returns:
      ({"last_logits" [B, V]} or {"sums" [B, K], "lengths" [B, K]}, the DecoderOutput), with the
      traces' per-token arrays reshaped to [B, K * T, ...] for loglik, so token means are per item.
    """
    ids = batch["ids"]
    if "mask" not in batch:
        out = model(ids, train=train, return_traces=return_traces)
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
