"""The causal-LM task of `train.py`: data, model, next-token loss and metrics (bits per byte).

A config selects it with `cfg.task = "lm"` (configs/lm_stdlib.py); `train.train_and_evaluate`
then trains a `models.decoder.Decoder` on a `data.text.TextDataset`. Training examples are packed
rows [T + 1]: inputs row[:-1], targets row[1:], PAD targets masked out.

Metrics (per split): `nll` (mean next-token cross-entropy, nats per target token), `accuracy`
(next-token top-1), `bits_per_token` = nll / ln 2 and `bits_per_byte` = bits_per_token /
bytes_per_token, where bytes_per_token is the split's text bytes over its target tokens (exactly
the bytes the targets stand for with the byte tokenizer, up to the BOS/EOS separators).

Letters: B batch, T tokens, V vocabulary.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from routecal import parallel
from routecal.data.text import TextDataset, TextSplit, load_text_dataset
from routecal.models.decoder import Decoder, DecoderConfig
from routecal.training.classify import gradient_step
from routecal.training.optim import trainable_filter

LN2 = math.log(2.0)


def build_lm_model(cfg: ml_collections.ConfigDict, dataset: TextDataset) -> Decoder:
    """The `Decoder` of `cfg.model` for `dataset`'s vocabulary, initialised from `cfg.seed`.

    `model.max_len` defaults to `data.seq_len`; a longer `data.seq_len` is an error.
    """
    mc = cfg.model.to_dict() if hasattr(cfg.model, "to_dict") else dict(cfg.model)
    max_len = mc.pop("max_len", None) or dataset.seq_len
    if dataset.seq_len > max_len:
        raise ValueError(
            f"data.seq_len: {dataset.seq_len} exceeds the model's maximum model.max_len={max_len}"
        )
    dcfg = DecoderConfig.from_config(mc, vocab_size=dataset.vocab_size, max_len=int(max_len))
    seed = int(cfg.seed)
    return Decoder(dcfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1, router=seed + 2))


def masked_next_token_nll(logits_BxTxV: jax.Array, targets_BxT: jax.Array, pad: int):
    """Per-token cross-entropy (nats) and the 0/1 mask of non-PAD targets, both [B, T]."""
    nll = optax.softmax_cross_entropy_with_integer_labels(
        logits_BxTxV.astype(jnp.float32), targets_BxT
    )
    mask = (targets_BxT != pad).astype(jnp.float32)
    return nll * mask, mask


@functools.lru_cache(maxsize=8)
def make_lm_train_step(trainable: str, pad: int):
    """The jit-compiled LM train step for one trainable selection and PAD id (cached)."""
    wrt = trainable_filter(trainable)

    @nnx.jit
    def train_step(model: Decoder, optimizer: nnx.Optimizer, rows_BxT1):
        ids = rows_BxT1.astype(jnp.int32)
        inputs, targets = ids[:, :-1], ids[:, 1:]

        def loss_fn(m: Decoder):
            out = m(inputs, train=True)
            nll, mask = masked_next_token_nll(out.logits, targets, pad)
            ce = jnp.sum(nll) / jnp.maximum(jnp.sum(mask), 1.0)
            return ce + out.aux_loss, (ce, out.aux_loss)

        return gradient_step(model, optimizer, loss_fn, wrt)

    return train_step


@functools.partial(nnx.jit, static_argnums=(2,))
def _eval_step(model: Decoder, rows_BxT1, pad: int):
    ids = rows_BxT1.astype(jnp.int32)
    targets = ids[:, 1:]
    logits = model(ids[:, :-1]).logits
    nll, mask = masked_next_token_nll(logits, targets, pad)
    correct = (jnp.argmax(logits, axis=-1) == targets).astype(jnp.float32) * mask
    return jnp.sum(nll), jnp.sum(correct), jnp.sum(mask)


def evaluate_lm(
    model: Decoder,
    split: TextSplit,
    *,
    pad: int,
    batch_size: int,
    mesh: jax.sharding.Mesh | None = None,
    max_batches: int | None = None,
) -> dict[str, float]:
    """Next-token metrics of `model` on `split` (the first `max_batches` batches if set).

    Batches have a fixed size (the last one filled with PAD rows, which count nowhere).
    """
    mesh = mesh if mesh is not None else parallel.make_mesh(1)
    rows = split.ids
    n = len(rows) if max_batches is None else min(len(rows), max_batches * batch_size)
    sums = np.zeros(3)
    for i in range(0, n, batch_size):
        chunk = rows[i : min(i + batch_size, n)]
        if len(chunk) < batch_size:
            fill = np.full((batch_size - len(chunk), rows.shape[1]), pad, rows.dtype)
            chunk = np.concatenate([chunk, fill])
        x = jax.device_put(chunk, parallel.batch_sharding(mesh, 2))
        sums += np.asarray(jax.device_get(_eval_step(model, x, pad)), np.float64)
    nll_sum, correct, count = sums
    if count == 0:
        raise ValueError("split: no target token to evaluate")
    bits_per_token = nll_sum / count / LN2
    return {
        "nll": nll_sum / count,
        "accuracy": correct / count,
        "bits_per_token": bits_per_token,
        "bits_per_byte": bits_per_token / split.bytes_per_token,
        "n_tokens": int(count),
    }


class LMTask:
    """What `train.py` needs to train a causal LM (the classifier has the same attributes)."""

    kind = "lm"

    def __init__(self, cfg: ml_collections.ConfigDict):
        self.cfg = cfg
        self.dataset = load_text_dataset(cfg.data)
        self.pad = int(self.dataset.tokenizer.pad)
        self.eval_splits = ("calib", "test")
        self.final_splits = tuple(s for s in self.dataset.splits if s != "train")
        self.max_eval_batches = cfg.train.get("eval_max_batches", None)

    @property
    def n_train(self) -> int:
        return len(self.dataset.train)

    def build_model(self) -> Decoder:
        return build_lm_model(self.cfg, self.dataset)

    def train_batch(self, idx: np.ndarray, step: int) -> tuple[np.ndarray, ...]:
        del step
        return (self.dataset.train.ids[idx],)

    def train_step(self, trainable: str):
        return make_lm_train_step(trainable, self.pad)

    def evaluate(
        self, model: Decoder, split: str, *, batch_size: int, mesh: Any, final: bool = False
    ) -> dict[str, float]:
        return evaluate_lm(
            model,
            self.dataset.split(split),
            pad=self.pad,
            batch_size=batch_size,
            mesh=mesh,
            max_batches=None if final else self.max_eval_batches,
        )

    def artifacts(self) -> dict[str, Any]:
        """JSON files the run writes next to config.json (the corpus manifest)."""
        return {"corpus_manifest.json": self.dataset.manifest}
