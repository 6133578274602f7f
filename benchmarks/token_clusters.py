"""The level of the recommended test on real token predictions: documents vs packed rows as clusters.

    python benchmarks/token_clusters.py WORKDIR                    # train, predict, >= 100 draws
    python benchmarks/token_clusters.py WORKDIR --run RUN_DIR      # an already trained LM run
    python benchmarks/token_clusters.py WORKDIR --tokens DIR       # token predictions already made
                                                                   # (e.g. a study's split)

Steps (each skipped when its output exists in WORKDIR):
  1. train `configs/lm_stdlib.py` (the standard byte-level decoder) for `--steps` steps in
     WORKDIR/run (or use `--run`);
  2. predict every in-domain test token (the test split without `data.max_bytes`, so all of its
     files) with `token_predict.predict_split`, records carrying `seq_id` (packed row) and `doc_id`
     (source file), in WORKDIR/tokens_test;
  3. `--draws` times: a routing feature constant per document, drawn N(0, 1) independently of
     everything (H0 true), tested by `stats.diagnostics.conditional_calibration_test` with the
     documents as clusters and, with the same key, the rows as clusters.
Prints the data (tokens, rows, documents, effective documents, the sd over documents of their mean
(correct - confidence)) and, per cluster unit, the rejection rate at alpha with its Clopper-Pearson
95% interval; writes WORKDIR/token_clusters.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import numpy as np

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def train(run_dir: pathlib.Path, steps: int) -> None:
    from routecal.config import load_config
    from routecal.training import train as train_mod

    cfg = load_config(str(ROOT / "configs" / "lm_stdlib.py"),
                      [f"train.steps={steps}", f"train.eval_every={steps}",
                       f"train.checkpoint_every={steps}"])
    train_mod.train_and_evaluate(cfg, str(run_dir))


def predict_all_test(run_dir: pathlib.Path, out: pathlib.Path) -> pathlib.Path:
    """Token records of every in-domain test token (no `data.max_bytes` cap)."""
    from routecal.data.text import load_text_dataset
    from routecal.training import token_predict
    from routecal.training.train import load_trained

    model, cfg, _ = load_trained(run_dir)
    data = {**cfg.data.to_dict(), "max_bytes": None}
    ds = load_text_dataset(data)
    return token_predict.predict_split(model, ds.test, out, pad=int(ds.tokenizer.pad),
                                       batch_size=32,
                                       meta={"split": "test", "run": str(run_dir)})


def clopper_pearson(k: int, n: int) -> tuple[float, float]:
    from scipy import stats

    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
    return float(ci.low), float(ci.high)


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir")
    p.add_argument("--run", default=None, help="a trained LM run directory (skips training)")
    p.add_argument("--steps", type=int, default=150)
    p.add_argument("--draws", type=int, default=100)
    p.add_argument("--n-permutations", type=int, default=1000)
    p.add_argument("--alpha", type=float, default=0.05)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tokens", default=None,
                   help="token predictions to test (skips training and predicting), e.g. "
                        "W/runs/full/seed0/predictions/tokens/test of an LM study")
    p.add_argument("--units", default="document,row", help="cluster units, comma-separated")
    a = p.parse_args(argv)
    from routecal.files import predictions
    from routecal.stats import diagnostics, sequences

    w = pathlib.Path(a.workdir)
    w.mkdir(parents=True, exist_ok=True)
    run = pathlib.Path(a.run) if a.run else w / "run"
    t0 = time.perf_counter()
    if not a.run and not a.tokens and not (run / "checkpoints").is_dir():
        train(run, a.steps)
    t1 = time.perf_counter()
    pred_dir = pathlib.Path(a.tokens) if a.tokens else w / "tokens_test"
    if a.tokens and not (pred_dir / "index.json").is_file():
        raise SystemExit(f"--tokens: no token predictions (index.json) in {pred_dir}")
    if not (pred_dir / "index.json").is_file():
        predict_all_test(run, pred_dir)
    t2 = time.perf_counter()
    t = predictions.token_arrays(predictions.load(pred_dir), str(pred_dir))
    conf, corr = t["confidence"], t["correct"]
    units = {u: predictions.cluster_ids(t, u) for u in a.units.split(",")}
    doc = np.unique(predictions.cluster_ids(t, "document"), return_inverse=True)[1]
    n_doc = int(doc.max()) + 1
    gap = np.bincount(doc, corr - conf) / np.bincount(doc)
    info = {"n_tokens": len(conf), "accuracy": float(corr.mean()),
            "sd_doc_mean_gap": float(np.std(gap, ddof=1)),
            **{u: sequences.cluster_sizes(c) for u, c in units.items()}}
    print(json.dumps(info), flush=True)
    rng = np.random.default_rng(a.seed)
    pvals = {u: [] for u in units}
    for i in range(a.draws):
        routing = rng.normal(size=n_doc)[doc]
        for u, c in units.items():
            res = diagnostics.conditional_calibration_test(
                conf, corr, routing, key=1000 * a.seed + i, clusters=c,
                n_permutations=a.n_permutations)
            pvals[u].append(res.p_value)
        if i % 10 == 9:
            print(f"draw {i + 1}: rejections " + ", ".join(
                f"{u} {sum(q < a.alpha for q in v)}" for u, v in pvals.items()), flush=True)
    t3 = time.perf_counter()
    out = {"args": vars(a), "data": info, "seconds": {"train": t1 - t0, "predict": t2 - t1,
                                                      "draws": t3 - t2}, "units": {}}
    for u, v in pvals.items():
        k = int(sum(q < a.alpha for q in v))
        out["units"][u] = {"rejections": k, "draws": len(v), "rate": k / len(v),
                           "clopper_pearson_95": clopper_pearson(k, len(v)), "p_values": v}
        lo, hi = out["units"][u]["clopper_pearson_95"]
        print(f"| {u} | {info[u]['n_clusters']} | {info[u]['n_eff_clusters']:.1f} | {k} / {len(v)}"
              f" | {k / len(v):.3f} [{lo:.3f}, {hi:.3f}] |")
    (w / "token_clusters.json").write_text(json.dumps(out, indent=1))
    return out


if __name__ == "__main__":
    main()
