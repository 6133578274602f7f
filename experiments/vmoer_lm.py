"""The VMoER language-model table: MoE decoder, embedded MCQA, every router over seeds.

    PYTHONPATH=. python experiments/vmoer_lm.py --config configs/vmoer_lm.py:quick --workdir /tmp/vl
    PYTHONPATH=. python experiments/vmoer_lm.py                      # the default (3 seeds)

Prints the table (mean ± std [min, max] over seeds, relative change vs det) beside the paper's
claims and writes --workdir/tables/vmoer.csv and --workdir/vmoer_lm_results.json.
"""

from __future__ import annotations

import argparse
import sys

from routecal import config
from routecal.pipeline import vmoer_lm


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/vmoer_lm.py")
    ap.add_argument("--workdir", default="/tmp/routecal_vmoer_lm")
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    cfg = config.load_config(args.config, args.overrides)
    out = vmoer_lm.run(cfg, args.workdir)
    print(f"\nVMoER LM table ({len(cfg.experiment.seeds)} seeds; {out['time_s']:.0f} s wall)")
    print(out["markdown"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
