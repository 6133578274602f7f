"""The LM study's `hf` source: an imported Hugging Face MoE checkpoint instead of a trained decoder.

A study whose plan says `source = "hf"` (`configs/study_pretrained.py`) trains nothing:
`token_stages.train_predict` hands each model (`configs/pretrained_lm.py`) here, which imports `model.checkpoint` with
`routecal.models.pretrained.load_hf` (`model.dtype`, `model.dispatch`), builds the config's text
dataset (`data`: the embedded stdlib corpus by default; `data.tokenizer` the checkpoint's
tokenizer.json for a real model) and writes the same token predictions as for routecal's decoders
(`token_predict.predict_lm`: confidence, correctness, per-MoE-layer router entropy, top-1 margin
and logit spread, `doc_id`), so every later stage (diagnostics, power, probes, report) runs
unchanged. `model.checkpoint = "random:<model_type>"` writes a tiny random checkpoint of
`export.TINY_CONFIGS` into the run directory first (the `:quick` smoke run; not evidence).
"""

from __future__ import annotations

import pathlib
import time
from collections.abc import Mapping
from typing import Any

import ml_collections

RANDOM_PREFIX = "random:"


def checkpoint_dir(cfg: ml_collections.ConfigDict, run_dir: pathlib.Path) -> str:
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


def import_predict(cfg: ml_collections.ConfigDict, run_dir: pathlib.Path, *,
                   predict_options: Mapping[str, Any]) -> dict[str, Any]:
    """Imports the checkpoint and writes its token predictions under `run_dir` (the
    `token_stages.train_predict` result shape: metrics, seconds, paths, depth_attention)."""
    from routecal.data.text import load_text_dataset
    from routecal.models.pretrained import load_hf
    from routecal.training import token_predict

    t0 = time.perf_counter()
    run_dir.mkdir(parents=True, exist_ok=True)
    ckpt = checkpoint_dir(cfg, run_dir)
    model, info = load_hf(ckpt, dtype=str(cfg.model.dtype),
                          overrides={"dispatch": str(cfg.model.dispatch)})
    dataset = load_text_dataset(cfg.data)
    if dataset.vocab_size > info.config.vocab_size:
        raise ValueError(f"data.tokenizer: {dataset.tokenizer.name} has {dataset.vocab_size} "
                         f"ids, more than the checkpoint's vocab_size {info.config.vocab_size}")
    t1 = time.perf_counter()
    paths = token_predict.predict_lm(model, dataset, run_dir, **dict(predict_options))
    t2 = time.perf_counter()
    metrics = {"family": info.family.model_type, "n_params": info.n_params,
               "moe_layers": list(info.config.moe_layers), "checkpoint": ckpt}
    return {"metrics": metrics, "train_seconds": t1 - t0, "predict_seconds": t2 - t1,
            "paths": {k: str(v) for k, v in paths.items()}, "depth_attention": {}}
