"""Smoke test of experiments/vmoer_pretrained.py (the VMoER section's "imported" source,
`training.vmoer_imported`) on a tiny imported checkpoint and MCQA files."""

from __future__ import annotations

import importlib.util
import json
import pathlib

import numpy as np
import pytest
from tokenizers import Tokenizer, models, pre_tokenizers

from routecal.models.routers import baselines

ROOT = pathlib.Path(__file__).resolve().parents[3]
WORDS = ["[UNK]", "Question", ":", ".", "Answer", "A", "B", "C", "D", "red", "blue", "sky", "sea",
         "is", "the", "what", "colour", "of", "green", "grass"]


def _experiment():
    import sys

    if str(ROOT / "experiments") not in sys.path:  # the script imports paper_setup beside it
        sys.path.insert(0, str(ROOT / "experiments"))
    spec = importlib.util.spec_from_file_location("vmoer_pretrained",
                                                  ROOT / "experiments" / "vmoer_pretrained.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _mcqa(path, n, seed):
    """An OpenBookQA-format (AI2 JSONL) file of n 4-option questions."""
    rng = np.random.default_rng(seed)
    colours = ["red", "blue", "green", "grass"]
    with open(path, "w") as f:
        for _ in range(n):
            thing = str(rng.choice(["sky", "sea", "grass"]))
            choices = [{"text": c, "label": lab}
                       for c, lab in zip(rng.permutation(colours), "ABCD", strict=True)]
            f.write(json.dumps({"question": {"stem": f"what is the colour of the {thing}",
                                             "choices": choices},
                                "answerKey": str(rng.choice(list("ABCD")))}) + "\n")
    return f"{path}:openbookqa"


@pytest.mark.slow  # compiles a retrofit step and two scoring passes (~1 min on a loaded CPU)
def test_experiment_runs_end_to_end(checkpoint, tmp_path):
    d, _, _ = checkpoint("granitemoe", num_hidden_layers=1)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(pathlib.Path(d) / "tokenizer.json"))
    files = {s: _mcqa(tmp_path / f"{s}.jsonl", 6, i)
             for i, s in enumerate(["train", "test", "near", "far", "calib"])}
    exp = _experiment()
    argv = ["--checkpoint", d, "--workdir", str(tmp_path / "w"), "--routers", "det,mfvr",
            "--seeds", "0", "--steps", "2", "--batch-size", "4", "--samples", "2",
            "--checkpoint-every", "1", "--dtype", "float32", "--sigmas", "0.001,0.05",
            "--beta-grid", "0.01,0.1", *sum(
                ([f"--{s}", p] for s, p in files.items()), [])]
    out = exp.main(argv)
    rows = {r: seeds["0"] for r, seeds in out["per_run"].items()}
    assert set(rows) == {"det", "mfvr_retrofit"}  # an imported checkpoint is only retrofitted
    for r in rows.values():
        assert 0.0 <= r["ece"] <= 1.0 and 0.0 <= r["stability"] <= 1.0
        assert 0.0 <= r["ood_auroc_far"] <= 1.0 and 0.0 <= r["accuracy"] <= 1.0
    assert rows["det"]["flops_infer_pct"] == 0.0 and rows["det"]["ood_auroc_near_mi"] == 0.5
    assert rows["mfvr_retrofit"]["flops_infer_pct"] > 0.0
    assert "ood_auroc_near_mi" in rows["mfvr_retrofit"]
    for r in rows.values():  # every OOD score named, for every router (issue 24 item 1)
        for name in ("entropy", "max_prob", "mi", "gating_entropy", "router_logit_variance"):
            assert f"ood_auroc_far_{name}" in r
    assert (tmp_path / "w" / "vmoer" / "mfvr_retrofit" / "seed0" / "beta0.1" / "posterior").is_dir()
    assert (tmp_path / "w" / "tables" / "vmoer.csv").exists()
    m = rows["mfvr_retrofit"]  # beta chosen on the calib split, recorded
    assert m["beta"] in (0.01, 0.1) and len(m["beta_calib_nll"]) == 2
    assert m["beta_calib_nll"][m["beta_grid"].index(m["beta"])] == min(m["beta_calib_nll"])
    assert "beta" not in rows["det"]
    assert "| mfvr_retrofit |" in (tmp_path / "w" / "table.md").read_text()
    res = json.loads((tmp_path / "w" / "results.json").read_text())["vmoer"]
    assert res["n_options"] == 4 and res["n_dropped_items"] == dict.fromkeys(
        ["train", "calib", "in", "near", "far"], 0)
    again = exp.main(argv)  # finished cells are kept: same numbers, no recomputation
    assert again["per_run"] == out["per_run"]
    with pytest.raises(ValueError, match="missing.jsonl"):
        exp.main([*argv[:-2], "--far", f"{tmp_path / 'missing.jsonl'}:medmcqa", "--workdir",
                  str(tmp_path / "w2")])


@pytest.mark.slow  # 4 members + SWAG retrofits of a 1-layer checkpoint (~1 min on a loaded CPU)
def test_ensemble_members_fitted_alone_and_swag_collects(checkpoint, tmp_path):
    d, _, _ = checkpoint("granitemoe", num_hidden_layers=1)
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(str(pathlib.Path(d) / "tokenizer.json"))
    files = {s: _mcqa(tmp_path / f"{s}.jsonl", 6, i) for i, s in enumerate(["train", "test"])}
    argv = [
        "--checkpoint", d, "--workdir", str(tmp_path / "w"), "--routers", "det,ensemble,swag",
        "--seeds", "0", "--steps", "4", "--batch-size", "4", "--samples", "2",
        "--checkpoint-every", "2", "--dtype", "float32", "--sigmas", "0.01",
        "--vmoer", "ensemble=3", "--member-max-steps", "8",
        *sum(([f"--{s}", p] for s, p in files.items()), []),
    ]  # fmt: skip
    out = _experiment().main(argv)
    rows = {r: seeds["0"] for r, seeds in out["per_run"].items()}
    members = rows["ensemble_retrofit"]["members"]
    assert [mm["seed"] for mm in members] == [[0, 0], [0, 1], [0, 2]]
    for m, mm in enumerate(members):  # each fitted alone, its own cell and recorded losses
        # until its plateau (checked at step 4, the only check before the cap of 8)
        n = len(mm["losses"])
        assert n == mm["steps"] and mm["max_steps"] == 8 and np.all(np.isfinite(mm["losses"]))
        assert n == (4 if baselines.converged(mm["losses"][:4]) else 8)
        assert (tmp_path / "w" / "vmoer" / "ensemble_retrofit" / "seed0" / f"member{m}"
                / "posterior").is_dir()
    swag_row = rows["swag_retrofit"]
    assert swag_row["swag_n"] == 2 and len(swag_row["losses"]) == 4  # steps 2, 3 of 4
    assert swag_row["nll"] != rows["det"]["nll"]
    # a rerun whose retrofit had finished (the seed file and the stage lost) reads the saved
    # moments back
    (tmp_path / "w" / "vmoer" / "seed0.json").unlink()
    (tmp_path / "w" / "stages" / "vmoer_0.json").unlink()
    again = _experiment().main(argv)["per_run"]["swag_retrofit"]["0"]
    assert again["swag_n"] == 2
    assert again["nll"] == pytest.approx(swag_row["nll"], rel=1e-5)
