"""Published MCQA benchmarks read through TFDS, where the TFDS catalog has a builder.

    ds = load_mcqa_tfds("ai2_arc/ARC-Easy", "test", data_dir="~/tensorflow_datasets")
    ds = load_mcqa_tfds("openbookqa", "test", domain="in")

Builders (TFDS 4.9 catalog; Li & Wicker, arXiv:2603.09453, Sec. 5 use OpenBookQA in-domain and
ARC-E/C near-domain):
  ai2_arc      configs ARC-Easy / ARC-Challenge: question, choices {label, text}, answerKey (the
               labels and the key are ClassLabels over the same names: the answer is the key's
               position among the item's labels);
  openbookqa   question {stem, choice_A..choice_D}, answerKey (ClassLabel over A-D).
SciQ and MedMCQA have no TFDS builder: read their published files with
`routecal.data.mcqa_formats.load_mcqa_file`. Nothing is downloaded: the data must be prepared in
`data_dir` (array_record, readable without TensorFlow; `routecal.data.tfds.open_builder` raises a
ValueError naming the dataset, the directory and how to prepare it).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from routecal.data import tfds as tfds_io
from routecal.data.mcqa import MCQA, from_parsed

TFDS_BUILDERS = ("ai2_arc", "openbookqa")


def _text(x: Any) -> str:
    return x.decode("utf-8") if isinstance(x, bytes) else str(x)


def parse_record(name: str, row: Mapping[str, Any]) -> tuple[str, list[str], int]:
    """(question, options, answer index) of one decoded TFDS record of builder `name`."""
    if name.split("/")[0] == "ai2_arc":
        labels = [int(v) for v in np.asarray(row["choices"]["label"]).reshape(-1)]
        texts = [_text(t) for t in np.asarray(row["choices"]["text"], dtype=object).reshape(-1)]
        key = int(row["answerKey"])
        if key not in labels:
            raise ValueError(f"answerKey {key} is not among the item's labels {labels}")
        return _text(row["question"]), texts, labels.index(key)
    q = row["question"]
    return _text(q["stem"]), [_text(q[f"choice_{c}"]) for c in "ABCD"], int(row["answerKey"])


def load_mcqa_tfds(
    name: str,
    split: str = "test",
    *,
    data_dir: str | os.PathLike | None = None,
    n_options: int | None = None,
    pad: bool = False,
    domain: str = "in",
) -> MCQA:
    """One split of a prepared TFDS MCQA benchmark as an `MCQA` (see the module docstring).

    Args:
      name: "ai2_arc/ARC-Easy", "ai2_arc/ARC-Challenge" or "openbookqa" (optionally with a
        ":<version>"). split: a split of the prepared data ("train", "validation", "test").
      data_dir: the TFDS data dir (default $TFDS_DATA_DIR, else ~/tensorflow_datasets).
      n_options: keep only items with this many options (`MCQA.n_dropped` counts the rest);
        None: mixed counts (ARC) are an error naming them, unless `pad` (`mcqa.from_parsed`).
      domain: label for tables ("in", "near", "far").
    Raises:
      ValueError: no TFDS builder for `name` (SciQ, MedMCQA), data not prepared (naming the
        directory), an unknown split, or a record that does not parse (named by its 1-based
        number).
    """
    base = name.split("/")[0].split(":")[0]
    if base not in TFDS_BUILDERS:
        raise ValueError(f"name: no TFDS builder for {name!r} (TFDS has {TFDS_BUILDERS}); read "
                         f"SciQ and MedMCQA files with routecal.data.mcqa_formats.load_mcqa_file")
    builder = tfds_io.open_builder(name, data_dir)
    splits: Sequence[str] = list(builder.info.splits)
    if split not in splits:
        raise ValueError(f"split: {name} has no split {split!r} (prepared: {sorted(splits)})")
    source = builder.as_data_source(split=split)
    where = f"TFDS {name}[{split}]"
    parsed = []
    for i in range(len(source)):
        try:
            parsed.append((*parse_record(name, source[i]), f"record {i + 1}"))
        except (KeyError, TypeError, ValueError) as e:
            raise ValueError(f"{where} record {i + 1}: does not parse ({type(e).__name__}: {e})"
                             ) from e
    if not parsed:
        raise ValueError(f"{where}: holds no records")
    return from_parsed(parsed, n_options, pad=pad, name=base, domain=domain, where=where)
