"""Reproduce the VMoER table on digits: deterministic MoE vs VMoER routers over seeds.

    PYTHONPATH=. python experiments/vmoer_table.py       # 18 min wall (7 min CPU), shared 2 cores
    PYTHONPATH=. python experiments/vmoer_table.py --config configs/vmoer_digits.py:quick

The VMoER section (`routecal.study.vmoer`) on the digits classifier, run by the study alone
(`paper_setup.vmoer_section`: configs/study.py with no architectures): trains (or resumes) every
(router, seed) run under --workdir/vmoer, prints the table (mean ± std [min, max] over seeds,
relative change vs the deterministic router) next to the paper's claims, and writes
--workdir/results.json (its "vmoer"), --workdir/tables/vmoer.csv and the report.
"""

from __future__ import annotations

import argparse

import paper_setup


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/vmoer_digits.py")
    ap.add_argument("--workdir", default="/tmp/routecal_vmoer")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    out = paper_setup.vmoer_section("study.py", args.config, args.overrides, args.workdir)
    print()
    print(f"VMoER table ({len(out['per_run']['det'])} seeds; train + evaluation "
          f"{out['runs_wall_s']:.0f} s)")
    print(out["markdown"])
    print()
    fl = out["flops"]
    print(
        "FLOP overhead, realistic layer (d1536, 40 experts, top-8, SwiGLU F=512): "
        f"mfvr {fl['realistic_layer']['overhead_mfvr_infer_pct']:.3f}% (inference, S=8), "
        f"vtsr {fl['realistic_layer']['overhead_vtsr_infer_pct']:.3f}%"
    )
    print("Paper claims vs det:", out["paper_claims"])
    t = out["table"]
    for m in t:
        if m == "det":
            continue
        rel = {k: t[m][k].get("rel_change_pct") for k in ("stability", "ece", "ood_auroc")}
        print(
            f"  {m:<15} stability {rel['stability']:+.1f}%  ece {rel['ece']:+.1f}%  "
            f"ood_auroc {rel['ood_auroc']:+.1f}%"
        )
    return out


if __name__ == "__main__":
    main()
