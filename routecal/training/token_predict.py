"""Token-level predictions of a causal LM, streamed to disk in shards (memory constant in N).

    token_predict.predict_split(model, split, out_dir, pad=258, every=4, min_position=16)

For every evaluated position t of a packed row (input ids row[:t+1], target row[t+1]), one record:

  confidence   max_v p(v)             correct   argmax_v p(v) == label
  entropy      -sum_v p(v) log p(v)   label     the target id
  seq_id       the row index in the split, position  t (0-based), domain  0 in / 1 near / 2 far
  nll          -log p(label)
  doc_id       the document of the target token (`TextSplit.doc[seq_id, t + 1]`: the index of the
               document in its split's list, as packed; a row spanning two documents gives its
               tokens both ids, token by token: `routecal.data.text.packing`). Absent only for a
               `TextSplit` built without documents (`doc=None`).

and, for AttnRes models, per depth-attention site l (L sublayers then the readout; columns S):
  H [S], H_norm [S], depth_mean [S], depth_var [S]   (`traces.py` definitions, per token)
and, for MoE / VMoER models, per MoE layer m (columns M) with K experts per token:
  router_entropy [M], router_entropy_norm [M], top1_margin [M], router_logit_spread [M]
  (variance over experts of the router logits), experts [M, K] int16, gates [M, K], and, for
  VMoER logit routers, router_logit_var [M] (the router's `router_logit_var` trace, else the
  square of its mean posterior std `router_sigma`).

Thinning: `every` keeps positions t with t % every == 0, `min_position` keeps t >= p (short contexts
are atypical), `max_tokens` stops after that many records. PAD targets are never recorded. The
forward pass runs in fixed-size batches; each batch's records are appended to a `shards.ShardWriter`,
so no [N, T, S] array is ever held: peak memory is one batch plus one shard.

Token records keep summaries, not the [N, V] logits; `token_logits` recomputes the logits of given
stored tokens (their `seq_id` / `position`) from the model, streamed in fixed batches of packed
rows, and `calib_logits` gathers them (temperature scaling, `study.temperature`).
`predict_pretrained`: the same predictions of an imported Hugging Face checkpoint (the `hf` source).

Letters: B batch, T tokens, V vocabulary, S depth sites, M MoE layers, K experts per token.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import time
from collections.abc import Iterator, Mapping
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from routecal import parallel
from routecal.data.text import DOMAIN_CODES, TextSplit
from routecal.files.shards import ShardWriter, join_parts
from routecal.training import traces

TOKEN_KEYS = ("confidence", "correct", "entropy", "label", "seq_id", "position", "domain", "nll",
              "doc_id")


@nnx.jit
def _token_stats(model: nnx.Module, rows_BxT1: jax.Array) -> dict[str, jax.Array]:
    """Per-token statistics of one batch of packed rows: arrays [B, T, ...]."""
    ids = rows_BxT1.astype(jnp.int32)
    inputs, targets = ids[:, :-1], ids[:, 1:]
    out = model(inputs, return_traces=True)
    logp = jax.nn.log_softmax(out.logits.astype(jnp.float32), axis=-1)
    p = jnp.exp(logp)
    pred = jnp.argmax(logp, axis=-1)
    rec = {
        "confidence": jnp.max(p, axis=-1),
        "correct": pred == targets,
        "entropy": -jnp.sum(p * logp, axis=-1),
        "nll": -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0],
    }
    alphas = out.traces["alpha"]
    if alphas:
        fns = {
            "H": traces.entropy,
            "H_norm": traces.normalized_entropy,
            "depth_mean": traces.depth_mean,
            "depth_var": traces.depth_var,
        }
        for k, fn in fns.items():
            rec[k] = jnp.stack([fn(a) for a in alphas], axis=-1)
    mlp = out.traces["mlp"]
    if mlp:
        probs = [tr["router_probs"].astype(jnp.float32) for tr in mlp]
        n_exp = probs[0].shape[-1]
        ent = jnp.stack([traces.entropy(q) for q in probs], axis=-1)
        rec["router_entropy"] = ent
        rec["router_entropy_norm"] = ent / jnp.log(jnp.float32(n_exp)) if n_exp > 1 else 0 * ent
        top2 = [jax.lax.top_k(q, min(2, n_exp))[0] for q in probs]
        rec["top1_margin"] = jnp.stack(
            [t[..., 0] - (t[..., 1] if n_exp > 1 else 0.0) for t in top2], axis=-1
        )
        rec["router_logit_spread"] = jnp.stack(
            [jnp.var(tr["router_logits"].astype(jnp.float32), axis=-1) for tr in mlp], axis=-1
        )
        rec["experts"] = jnp.stack([tr["experts"] for tr in mlp], axis=2).astype(jnp.int16)
        rec["gates"] = jnp.stack([tr["gates"].astype(jnp.float32) for tr in mlp], axis=2)
        if all("router_logit_var" in tr or "router_sigma" in tr for tr in mlp):
            rec["router_logit_var"] = jnp.stack([_logit_var(tr) for tr in mlp], axis=-1)
    return rec


def _logit_var(tr: dict[str, jax.Array]) -> jax.Array:
    """Posterior router-logit variance per token: the router's own `router_logit_var` trace if it
    gives one, else the square of `router_sigma` (the mean posterior std over experts that
    `vmoer.LogitVariationalRouter` traces)."""
    if "router_logit_var" in tr:
        return tr["router_logit_var"].astype(jnp.float32)
    return jnp.square(tr["router_sigma"].astype(jnp.float32))


def _check_thinning(every: int, min_position: int, max_tokens: int | None) -> None:
    for name, v, lo in (("every", every, 1), ("min_position", min_position, 0)):
        if isinstance(v, bool) or not isinstance(v, int | np.integer) or v < lo:
            raise ValueError(f"{name}: must be an integer >= {lo}, got {v!r}")
    if max_tokens is not None and (not isinstance(max_tokens, int | np.integer) or max_tokens < 1):
        raise ValueError(f"max_tokens: must be a positive integer or None, got {max_tokens!r}")


def predict_split(
    model: nnx.Module,
    split: TextSplit,
    out_dir: str | os.PathLike,
    *,
    pad: int,
    batch_size: int = 32,
    every: int = 1,
    min_position: int = 0,
    max_tokens: int | None = None,
    shard_tokens: int = 1 << 18,
    meta: dict | None = None,
    fingerprint: dict | None = None,
) -> pathlib.Path:
    """Writes the token records of `model` on `split` as shards under `out_dir` (see module doc).

    Args:
      model: a `Decoder` (any model whose call returns `.logits` and `.traces` works).
      split: packed rows [N, T + 1].
      out_dir: output directory (replaced if it holds sharded predictions).
      pad: PAD id (targets equal to it are skipped).
      batch_size: rows per forward pass (fixed; the last batch is PAD-filled).
      every, min_position, max_tokens: thinning (see module doc).
      shard_tokens: records per shard.
      meta: extra metadata for index.json.
      fingerprint: the producing run's identity stored in index.json (`run_fingerprint`).

    Returns:
      The output directory (read it with `routecal.files.predictions.load`).
    """
    _check_thinning(every, min_position, max_tokens)
    rows = split.ids
    t = rows.shape[1] - 1
    if min_position >= t:
        raise ValueError(f"min_position: {min_position} leaves no position of rows with T={t}")
    cfg = getattr(model, "cfg", None)
    info = {
        "kind": "tokens",
        "domain": split.domain,
        "domain_codes": DOMAIN_CODES,
        "every": every,
        "min_position": min_position,
        "seq_len": t,
        "bytes_per_token": split.bytes_per_token,
        "n_documents": None if split.doc is None else int(split.doc.max()) + 1,
        "sublayer_names": list(getattr(cfg, "sublayer_names", ()) or ()),
        "moe_layers": list(getattr(cfg, "moe_layers", ()) or ()),
        **(meta or {}),
    }
    pos_T = np.arange(t)
    keep_pos = (pos_T % every == 0) & (pos_T >= min_position)
    # records per row are known before the model runs: before_N[r] = records of rows < r, and
    # the first n_rows rows hold the first max_tokens records
    before_N = np.concatenate([[0], np.cumsum((keep_pos[None, :] & (rows[:, 1:] != pad)).sum(1))])
    n_rows = len(rows) if max_tokens is None else int(
        min(len(rows), np.searchsorted(before_N, max_tokens, side="left")))
    # multi-host: process i predicts its contiguous range of whole batches (the batches of one
    # process, so every row sees the same batch) into its own part; process 0 joins the parts
    mine = parallel.process_slice(-(-n_rows // batch_size))
    n_proc = parallel.process_count()
    path = _part_dir(out_dir, parallel.process_index(), n_proc) if n_proc > 1 else out_dir
    writer = ShardWriter(path, shard_rows=shard_tokens, meta=info, fingerprint=fingerprint)
    code = np.int8(DOMAIN_CODES[split.domain])
    written = int(before_N[min(mine.start * batch_size, len(rows))])
    for start in range(mine.start * batch_size, min(mine.stop * batch_size, n_rows), batch_size):
        if max_tokens is not None and written >= max_tokens:
            break
        chunk = rows[start : start + batch_size]
        b = len(chunk)
        if b < batch_size:
            chunk = np.concatenate([chunk, np.full((batch_size - b, t + 1), pad, rows.dtype)])
        stats = jax.device_get(_token_stats(model, jnp.asarray(chunk)))
        labels = chunk[:b, 1:].astype(np.int32)
        keep = keep_pos[None, :] & (labels != pad)
        bi, ti = np.nonzero(keep)
        if max_tokens is not None:
            bi, ti = bi[: max_tokens - written], ti[: max_tokens - written]
        rec: dict[str, Any] = {k: np.asarray(v)[:b][bi, ti] for k, v in stats.items()}
        rec["correct"] = rec["correct"].astype(np.bool_)
        rec["label"] = labels[bi, ti]
        rec["seq_id"] = (start + bi).astype(np.int64)
        rec["position"] = ti.astype(np.int32)
        rec["domain"] = np.full(len(bi), code, np.int8)
        if split.doc is not None:
            rec["doc_id"] = split.doc[start + bi, ti + 1].astype(np.int64)
        writer.append(rec)
        written += len(bi)
    writer.close()
    if n_proc == 1:
        return pathlib.Path(out_dir)
    parallel.barrier(f"predict_split:{out_dir}")  # every part is written
    if parallel.is_primary():
        join_parts([_part_dir(out_dir, i, n_proc) for i in range(n_proc)], out_dir)
    parallel.barrier(f"predict_split:{out_dir}:joined")
    return pathlib.Path(out_dir)


def _part_dir(out_dir: str | os.PathLike, i: int, n: int) -> pathlib.Path:
    """Where process i of n writes its part of `out_dir`'s shards (a hidden sibling)."""
    out = pathlib.Path(out_dir)
    return out.parent / f".{out.name}.part-{i:05d}-of-{n:05d}"


def predict_lm(
    model: nnx.Module,
    dataset: Any,
    workdir: str | os.PathLike,
    *,
    splits: tuple[str, ...] | None = None,
    batch_size: int = 32,
    every: int = 1,
    min_position: int = 0,
    max_tokens: int | None = None,
    shard_tokens: int = 1 << 18,
    fingerprint: dict | None = None,
) -> dict[str, pathlib.Path]:
    """Token records of every evaluation split of a `TextDataset` (default: all but train) under
    W/predictions/tokens/<split>/; returns split name -> directory. Each index records
    `fingerprint` (`run_fingerprint`) with the split added."""
    names = splits if splits is not None else tuple(s for s in dataset.splits if s != "train")
    out = {}
    for name in names:
        out[name] = predict_split(
            model,
            dataset.split(name),
            pathlib.Path(workdir) / "predictions" / "tokens" / name,
            pad=int(dataset.tokenizer.pad),
            batch_size=batch_size,
            every=every,
            min_position=min_position,
            max_tokens=max_tokens,
            shard_tokens=shard_tokens,
            meta={"split": name, "tokenizer": dataset.tokenizer.name},
            fingerprint=None if fingerprint is None else {**fingerprint, "split": name},
        )
    return out


def run_fingerprint(config: Any, step: int | None) -> dict[str, Any]:
    """{"config_hash", "step"}: the identity of a trained run that token shards record (the split
    is added per directory). `config_hash` is the sha256 (first 16 hex digits) of the config as
    sorted JSON, so another seed, model or data option gives another hash."""
    cfg = config.to_dict() if hasattr(config, "to_dict") else dict(config)
    text = json.dumps(cfg, sort_keys=True, default=str)
    return {"config_hash": hashlib.sha256(text.encode()).hexdigest()[:16],
            "step": None if step is None else int(step)}


LOGIT_BATCH_ROWS = 32  # packed rows per forward pass of `token_logits` (fixed: one compile)


@nnx.jit
def _logits(model: nnx.Module, inputs_BxT: jax.Array) -> jax.Array:
    """[B, T, V] float32 next-token logits of one batch of packed rows (inputs only)."""
    return model(inputs_BxT.astype(jnp.int32)).logits.astype(jnp.float32)


def token_logits(
    model: nnx.Module, ids_RxT1: np.ndarray, seq_id_N: np.ndarray, position_N: np.ndarray, *,
    pad: int, name: str = "tokens", batch_rows: int = LOGIT_BATCH_ROWS,
) -> Iterator[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The logits of the given tokens, streamed batch by batch (memory: one batch).

    Args:
      ids_RxT1: the packed split [R, T + 1] the predictions were made on.
      seq_id_N, position_N: [N] each token's row and position (as stored by `predict_split`).
      pad: PAD id (a token whose target is PAD was never recorded: a mismatch).
    Yields:
      (index [n] into the N tokens, logits [n, V] float32, labels [n]); every token once.
    Raises:
      ValueError: a token outside the split (row or position) or with a PAD target, named.
    """
    ids = np.asarray(ids_RxT1)
    seq = np.asarray(seq_id_N, np.int64)
    pos = np.asarray(position_N, np.int64)
    n_rows, t = ids.shape[0], ids.shape[1] - 1
    if ids.ndim != 2 or seq.ndim != 1 or seq.shape != pos.shape:
        raise ValueError(f"{name}: expected ids [R, T + 1] and seq_id, position [N] alike, got "
                         f"{ids.shape}, {seq.shape}, {pos.shape}")
    if seq.size and (seq.min() < 0 or seq.max() >= n_rows or pos.min() < 0 or pos.max() >= t):
        raise ValueError(f"{name}: seq_id/position outside the split's {n_rows} rows x {t} "
                         "positions (predictions of another dataset?)")
    labels = ids[seq, pos + 1].astype(np.int64)
    if np.any(labels == pad):
        raise ValueError(f"{name}: {int(np.sum(labels == pad))} tokens have a PAD target in the "
                         "split (predictions of another dataset?)")
    order = np.argsort(seq, kind="stable")
    seq_sorted, rows = seq[order], np.unique(seq)
    for b0 in range(0, len(rows), batch_rows):
        rows_b = rows[b0 : b0 + batch_rows]
        chunk = ids[rows_b, :-1]
        if len(rows_b) < batch_rows:  # PAD-filled to the fixed batch shape
            chunk = np.concatenate([chunk, np.full((batch_rows - len(rows_b), t), pad,
                                                   ids.dtype)])
        z = np.asarray(jax.device_get(_logits(model, jnp.asarray(chunk))))
        idx = order[np.searchsorted(seq_sorted, rows_b[0], side="left"):
                    np.searchsorted(seq_sorted, rows_b[-1], side="right")]
        yield idx, z[np.searchsorted(rows_b, seq[idx]), pos[idx]], labels[idx]


def calib_logits(model: nnx.Module, ids_RxT1: np.ndarray, toks: Mapping[str, np.ndarray], *,
                 pad: int, name: str = "calib") -> tuple[np.ndarray, np.ndarray]:
    """(logits [N, V] float32, labels [N]) of every token of `toks` (its seq_id/position)."""
    z, y = None, np.zeros(len(toks["seq_id"]), np.int64)
    for idx, z_b, y_b in token_logits(model, ids_RxT1, toks["seq_id"], toks["position"],
                                      pad=pad, name=name):
        if z is None:
            z = np.zeros((len(y), z_b.shape[1]), np.float32)
        z[idx], y[idx] = z_b, y_b
    if z is None:
        raise ValueError(f"{name}: no tokens to compute logits for")
    return z, y


# ----- the `hf` source: an imported Hugging Face MoE checkpoint instead of a trained decoder -----
RANDOM_PREFIX = "random:"


def _checkpoint_dir(cfg: ml_collections.ConfigDict, run_dir: pathlib.Path) -> str:
    """The checkpoint directory of `cfg.model.checkpoint` (writing the tiny random one if asked).

    Raises:
      ValueError: no checkpoint given, or an unknown random model type.
    """
    from routecal.models.pretrained import export

    ckpt = str(cfg.model.checkpoint)
    if not ckpt:
        raise ValueError("model.checkpoint: the hf source needs a checkpoint directory (config."
                         "json + safetensors), e.g. configs/study_pretrained.py:checkpoint=/ckpt")
    if not ckpt.startswith(RANDOM_PREFIX):
        return ckpt
    model_type = ckpt[len(RANDOM_PREFIX):]
    if model_type not in export.TINY_CONFIGS:
        raise ValueError(f"model.checkpoint: {ckpt!r}: no tiny config for {model_type!r}; "
                         f"have {sorted(export.TINY_CONFIGS)}")
    return export.write_random_checkpoint(run_dir / "checkpoint", export.TINY_CONFIGS[model_type],
                                          seed=int(cfg.seed))


def predict_pretrained(cfg: ml_collections.ConfigDict, run_dir: pathlib.Path, *,
                       predict_options: Mapping[str, Any]) -> dict[str, Any]:
    """The study's `hf` source: imports `model.checkpoint` (`models.pretrained.load_hf` with
    `model.dtype`, `model.dispatch`; "random:<model_type>" writes a tiny random checkpoint of
    `export.TINY_CONFIGS` into `run_dir` first, the `:quick` smoke run), builds the config's text
    dataset (`data`; `data.tokenizer` the checkpoint's tokenizer.json for a real model) and writes
    the same token predictions as for routecal's decoders (`predict_lm`) under `run_dir`. Returns
    the result shape of `study.token_stages.train_predict` (metrics, seconds, paths,
    depth_attention)."""
    from routecal.data.text import load_text_dataset
    from routecal.models.pretrained import load_hf

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = _checkpoint_dir(cfg, run_dir)
    model, info = load_hf(ckpt, dtype=str(cfg.model.dtype),
                          overrides={"dispatch": str(cfg.model.dispatch)})
    dataset = load_text_dataset(cfg.data)
    if dataset.vocab_size > info.config.vocab_size:
        raise ValueError(f"data.tokenizer: {dataset.tokenizer.name} has {dataset.vocab_size} "
                         f"ids, more than the checkpoint's vocab_size {info.config.vocab_size}")
    t1 = time.perf_counter()
    paths = predict_lm(model, dataset, run_dir, **dict(predict_options))
    t2 = time.perf_counter()
    metrics = {"family": info.family.model_type, "n_params": info.n_params,
               "moe_layers": list(info.config.moe_layers), "checkpoint": ckpt}
    return {"metrics": metrics, "train_seconds": t1 - t0, "predict_seconds": t2 - t1,
            "paths": {k: str(v) for k, v in paths.items()}, "depth_attention": {}}
