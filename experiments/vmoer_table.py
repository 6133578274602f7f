"""Reproduce the VMoER table on digits: deterministic MoE vs VMoER routers over seeds.

    PYTHONPATH=. python experiments/vmoer_table.py       # 18 min wall (7 min CPU), shared 2 cores
    PYTHONPATH=. python experiments/vmoer_table.py --config configs/vmoer_digits.py:quick

The VMoER section (`routecal.study.vmoer.run`) on the digits classifier: trains (or resumes)
every (router, seed) run under --workdir, prints the table (mean ± std [min, max] over seeds,
relative change vs the deterministic router) next to the paper's claims, and writes
--workdir/vmoer_results.json and --workdir/tables/vmoer.csv.
"""

from __future__ import annotations

import argparse
import sys

from routecal import config
from routecal.study import vmoer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/vmoer_digits.py")
    ap.add_argument("--workdir", default="/tmp/routecal_vmoer")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    cfg = config.load_config(args.config, args.overrides)
    out = vmoer.run(cfg, args.workdir)
    print()
    print(f"VMoER table ({len(cfg.experiment.seeds)} seeds; {out['time_s']:.0f} s)")
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
    for m in cfg.experiment.routers:
        if m == "det":
            continue
        rel = {k: t[m][k].get("rel_change_pct") for k in ("stability", "ece", "ood_auroc")}
        print(
            f"  {m:<15} stability {rel['stability']:+.1f}%  ece {rel['ece']:+.1f}%  "
            f"ood_auroc {rel['ood_auroc']:+.1f}%"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
