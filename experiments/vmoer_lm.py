"""The VMoER language-model table: MoE decoder, embedded MCQA, every router over seeds.

    PYTHONPATH=. python experiments/vmoer_lm.py --config configs/vmoer_lm.py:quick --workdir /tmp/vl
    PYTHONPATH=. python experiments/vmoer_lm.py                      # the default (3 seeds)
    PYTHONPATH=. python experiments/vmoer_lm.py --workdir W --report # markdown of W's results

The VMoER section (`routecal.study.vmoer`) on the MoE decoder of configs/vmoer_lm.py, run by the
study alone (`paper_setup.vmoer_section`: configs/study_lm.py with no architectures): prints the
table (mean ± std [min, max] over seeds, relative change vs det) beside the paper's claims and
writes --workdir/tables/vmoer.csv, --workdir/results.json (its "vmoer") and the report.
"""

from __future__ import annotations

import argparse
import json
import pathlib

import paper_setup

from routecal.report import vmoer_lm as vmoer_lm_report


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config", default="configs/vmoer_lm.py")
    ap.add_argument("--workdir", default="/tmp/routecal_vmoer_lm")
    ap.add_argument(
        "--report", action="store_true",
        help="print the markdown report of --workdir/results.json's VMoER section (no training)",
    )  # fmt: skip
    ap.add_argument("overrides", nargs="*", help="key=value config overrides")
    args = ap.parse_args(argv)
    if args.report:
        path = pathlib.Path(args.workdir) / "results.json"
        out = json.loads(path.read_text()).get("vmoer") if path.is_file() else None
        if not out:
            raise ValueError(f"--workdir: no VMoER results in {path} (run the experiment first)")
        print(vmoer_lm_report.report(out), end="")
        return out
    out = paper_setup.vmoer_section("study_lm.py", args.config, args.overrides, args.workdir)
    print(f"\nVMoER LM table ({len(out['seeds'])} seeds; train + evaluation "
          f"{out['runs_wall_s']:.0f} s wall)")
    print(vmoer_lm_report.report(out), end="")
    return out


if __name__ == "__main__":
    main()
