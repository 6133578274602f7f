"""The LM study's headline with documents vs packed rows as clusters: same models, same predictions.

    python benchmarks/lm_cluster_units.py W [--config configs/study_lm.py] [key=value ...]

W/runs/<arch>/seed<s> must hold the study's trained decoders (`routecal study` makes them there;
or `routecal train` with the study's `model_overrides`). For each run, the token predictions of
the study's domains are written if absent (`token_predict.predict_lm` with the study's
`predict.*`, in W/runs/<arch>/seed<s>/predictions/tokens/<split> as the study writes them;
records carry `seq_id` and `doc_id`), then every diagnostics cell of the plan
(domain x routed arch x seed x routing summary) is run with `study.grid.test_cell` under
`diagnostics.cluster_unit=row` and `=document` (the same cell key for both), Holm/BH-adjusted per
(test, domain) family (`study.grid.adjust`). Prints per domain and unit: raw / Holm / BH
rejections out of the cells, the clusters and their effective number; writes
W/cluster_units.json. Overrides are the study config's (`routecal.config`), e.g.
`seeds=(0,)` `architectures=('full','block')` `diagnostics.tests=('conditional',)`.
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


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("workdir")
    p.add_argument("--config", default=str(ROOT / "configs" / "study_lm.py"))
    p.add_argument("--predict-only", action="store_true",
                   help="write the missing predictions and stop (run one per arch in parallel)")
    p.add_argument("overrides", nargs="*", help="study config key=value overrides")
    a = p.parse_intermixed_args(argv)
    import jax

    from routecal.config import load_config
    from routecal.study import grid, token_stages, token_unit
    from routecal.study.plan import Plan
    from routecal.training import token_predict
    from routecal.training.train import load_trained

    w = pathlib.Path(a.workdir)
    (w / "nulls").mkdir(parents=True, exist_ok=True)
    units = ("row", "document")
    plans = {}
    for u in units:
        plans[u] = Plan.from_config(load_config(a.config, [*a.overrides,
                                                             f"diagnostics.cluster_unit={u}"]))
    plan = plans["document"]
    t0 = time.perf_counter()
    toks = {}
    for m in plan.routed:
        for s in plan.seeds:
            run = w / "runs" / m.name / f"seed{s}"
            tok_dir = run / "predictions" / "tokens"
            if not all((tok_dir / sp / "index.json").is_file() for _, sp in plan.domains):
                model, _, dataset = load_trained(run)  # the domains' splits only (not calib)
                token_predict.predict_lm(model, dataset, run, splits=tuple(
                    sp for _, sp in plan.domains), **plan.tokens.predict_options)
            if a.predict_only:
                continue
            toks[m.name, s] = {sp: token_stages.load_tokens(tok_dir / sp, f"{m.name}/seed{s}/{sp}")
                               for _, sp in plan.domains}
    t1 = time.perf_counter()
    if a.predict_only:
        return {"seconds": {"predict": t1 - t0}}
    rows: dict[str, list] = {u: [] for u in units}
    key = jax.random.key(plan.tests.seed)
    for i, (d, arch, s) in enumerate(plan.cells()):
        ck = jax.random.fold_in(key, i)
        for u in units:
            cell = token_unit.cell_rows(plans[u], toks, (d, arch, s))
            for j, f in enumerate(plan.features):
                out = grid.test_cell(cell, f, key=jax.random.fold_in(ck, j), s=plans[u].tests,
                                     nulls=w / "nulls" / f"{u}.npz")
                for test, r in out["tests"].items():
                    rows[u].append({"test": test, "domain": d, "arch": arch, "seed": s,
                                    "feature": f, "n": out["n"], "cluster_unit": u,
                                    "n_clusters": out["n_clusters"],
                                    "n_eff_clusters": out["n_eff_clusters"], **r})
        print(f"cell {d}/{arch}/{s} done ({time.perf_counter() - t1:.0f} s)", flush=True)
    t2 = time.perf_counter()
    alpha = plan.tests.alpha
    table = []
    for u in units:
        grid.adjust(rows[u], alpha)
        for d, _ in plan.domains:
            for test in plan.tests.tests:
                mine = [r for r in rows[u] if r["domain"] == d and r["test"] == test]
                table.append({"unit": u, "domain": d, "test": test, "cells": len(mine),
                              "raw": sum(r["p_value"] < alpha for r in mine),
                              "holm": sum(r["p_holm"] < alpha for r in mine),
                              "bh": sum(r["p_bh"] < alpha for r in mine),
                              "n_tokens": sorted({r["n"] for r in mine}),
                              "n_clusters": sorted({r["n_clusters"] for r in mine}),
                              "n_eff_clusters": sorted({round(r["n_eff_clusters"], 1)
                                                        for r in mine})})
    print("| domain | test | clusters | cells | reject | Holm | BH | clusters (n) | effective |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in sorted(table, key=lambda r: (r["domain"], r["test"], r["unit"])):
        print(f"| {r['domain']} | {r['test']} | {r['unit']} | {r['cells']} | {r['raw']} | "
              f"{r['holm']} | {r['bh']} | {r['n_clusters']} | {r['n_eff_clusters']} |")
    result = {"overrides": a.overrides, "config": a.config, "table": table,
              "rows": {u: [{k: v for k, v in r.items() if k != "null"} for r in rs]
                       for u, rs in rows.items()},
              "seconds": {"predict": t1 - t0, "diagnostics": t2 - t1},
              "n_permutations": plan.tests.n_permutations}
    (w / "cluster_units.json").write_text(json.dumps(result, indent=1, default=float))
    return result


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    main()
