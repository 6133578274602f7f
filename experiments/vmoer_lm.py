"""The VMoER language-model table: MoE decoder, embedded MCQA, every router over seeds.

    PYTHONPATH=. python experiments/vmoer_lm.py --config configs/vmoer_lm.py:quick --workdir /tmp/vl
    PYTHONPATH=. python experiments/vmoer_lm.py                      # the default (3 seeds)
    PYTHONPATH=. python experiments/vmoer_lm.py --workdir W --report # markdown of W's results

The VMoER section (`routecal.study.vmoer.run`) on the MoE decoder of configs/vmoer_lm.py: prints
the table (mean ± std [min, max] over seeds, relative change vs det) beside the paper's claims and
writes --workdir/tables/vmoer.csv and --workdir/vmoer_lm_results.json.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from routecal import config
from routecal.report import vmoer_lm as vmoer_lm_report
from routecal.study import vmoer


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/vmoer_lm.py")
    ap.add_argument("--workdir", default="/tmp/routecal_vmoer_lm")
    ap.add_argument(
        "--report", action="store_true",
        help="print the markdown report of --workdir/vmoer_lm_results.json (no training)",
    )  # fmt: skip
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    if args.report:
        path = pathlib.Path(args.workdir) / "vmoer_lm_results.json"
        if not path.is_file():
            raise ValueError(f"--workdir: no results file {path} (run the experiment first)")
        print(vmoer_lm_report.report(json.loads(path.read_text())), end="")
        return 0
    cfg = config.load_config(args.config, args.overrides)
    out = vmoer.run(cfg, args.workdir)
    print(f"\nVMoER LM table ({len(cfg.experiment.seeds)} seeds; {out['time_s']:.0f} s wall)")
    print(vmoer_lm_report.report(out), end="")
    return 0


if __name__ == "__main__":
    sys.exit(main())
