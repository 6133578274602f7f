"""The LM study on an imported checkpoint (`configs/study_pretrained.py:quick`, the `hf` source):
end to end on a tiny random checkpoint written here with `safetensors` in the hub layout."""

from __future__ import annotations

import json
import pathlib

import numpy as np

from routecal.config import load_config
from routecal.data.text import packing
from routecal.study import run as study

ROOT = pathlib.Path(__file__).resolve().parents[3]


def test_document_ids_follow_the_packing():
    """`packing.document_ids` (what token records' doc_id come from) against an independent
    count of BOS tokens in the packed stream."""
    docs = [np.array([5, 6, 7]), np.array([8]), np.array([9, 9, 9, 9, 9])]
    bos, eos, pad = 1, 2, 0
    rows = packing.pack_documents(docs, 4, bos=bos, eos=eos, pad=pad, vocab_size=16)
    # stream: [1 5 6 7 2][1 8 2][1 9 9 9 9 9 2]; the target at stream position p belongs to
    # the document whose BOS opens at or before p
    stream = np.concatenate([[bos, *d, eos] for d in docs])
    starts = np.flatnonzero(stream == bos)
    got = packing.document_ids([len(d) for d in docs], 4)[:, 1:]  # target tokens
    for i in range(rows.shape[0]):
        for t in range(4):
            p = 4 * i + t + 1
            if p < len(stream):
                assert got[i, t] == np.searchsorted(starts, p, side="right") - 1


def test_quick_study_on_an_imported_checkpoint(checkpoint, tmp_path):
    d, _, _ = checkpoint("olmoe", vocab_size=259, max_position_embeddings=128)
    cfg = load_config(str(ROOT / "configs" / "study_pretrained.py") + f":quick,checkpoint={d}")
    results = study.run(cfg, tmp_path / "W")
    saved = json.loads((tmp_path / "W" / "results.json").read_text())
    rows = saved["diagnostics"]["tests"]
    features = set(cfg.diagnostics.features)
    assert {r["test"] for r in rows} == set(cfg.diagnostics.tests)  # omnibus too (default)
    assert {r["feature"] for r in rows} == features  # router features only
    assert {r["domain"] for r in rows} == {"in", "near", "far"}
    assert all(0.0 <= r["p_value"] <= 1.0 for r in rows)
    assert results["runs"][0]["arch"] == "hf"
    tokens = tmp_path / "W" / "runs" / "hf" / "seed0" / "predictions" / "tokens" / "test"
    index = json.loads((tokens / "index.json").read_text())
    assert {"doc_id", "router_entropy_norm", "top1_margin"} <= set(index["columns"])
    assert (tmp_path / "W" / "report.md").exists()
