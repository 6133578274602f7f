"""The set-up the experiment scripts share: arguments, TFDS data overrides, running the study.

Used by `routing_calibration_paper.py` and `vmoer_paper.py`, and (`vmoer_section`: the VMoER
section alone through the study) by `vmoer_table.py`, `vmoer_lm.py` and `vmoer_pretrained.py`
(run as `python experiments/<x>.py`, so this module is importable beside them).
"""

from __future__ import annotations

import argparse
import pathlib
from collections.abc import Sequence
from typing import Any

from routecal.config import load_config
from routecal.study import run as study

ROOT = pathlib.Path(__file__).resolve().parents[1]


def parse_args(doc: str, *, permutations: bool = False) -> argparse.Namespace:
    """--dataset, --data_dir, --workdir, --seeds, --steps, --patch_size [, --permutations]."""
    p = argparse.ArgumentParser(description=doc.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10", choices=["mnist", "fashion_mnist", "cifar10"])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2,3,4", help="comma-separated seeds")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--patch_size", type=int, default=4)
    if permutations:
        p.add_argument("--permutations", type=int, default=10000)
    return p.parse_args()


def seeds(args: argparse.Namespace) -> tuple[int, ...]:
    return tuple(int(s) for s in args.seeds.split(","))


def data_overrides(args: argparse.Namespace) -> tuple[str, ...]:
    """Model-config overrides that train on the TFDS dataset from `--data_dir`."""
    return (
        f"data.name=tfds:{args.dataset}",
        f"data.data_dir={args.data_dir}",
        f"data.patch_size={args.patch_size}",
        f"train.steps={args.steps}",
    )


def run_study(args: argparse.Namespace, title: str, overrides: Sequence[str]) -> None:
    """`configs/study.py` with the seeds, a title and `overrides`; runs it and names the report."""
    cfg = load_config(
        str(ROOT / "configs" / "study.py"),
        [f"seeds={seeds(args)}", f"title=routecal study: {title} on {args.dataset}", *overrides],
    )
    study.run(cfg, args.workdir)
    print(f"report: {pathlib.Path(args.workdir) / 'report.html'}")


def vmoer_section(study_config: str, vmoer_config: str, overrides: Sequence[str],
                  workdir: str | pathlib.Path) -> dict[str, Any]:
    """The VMoER section alone, run by the study: `configs/<study_config>` with no architectures
    and the section `vmoer_config` (file[:variant], + `overrides`) at that config's own seeds, as

        routecal study --config configs/<study_config> --workdir W \\
            --config.sections="('vmoer',)" --config.architectures="()" \\
            --config.vmoer.config=<vmoer_config> --config.vmoer.overrides="(...)" \\
            --config.seeds="<experiment.seeds>"

    Returns `results["vmoer"]` (also in W/results.json; W/tables/vmoer.csv, W/report.html)."""
    path, _, variant = str(vmoer_config).partition(":")
    spec = str(pathlib.Path(path).resolve()) + (f":{variant}" if variant else "")
    section_seeds = tuple(int(s) for s in load_config(spec, overrides).experiment.seeds)
    cfg = load_config(str(ROOT / "configs" / study_config), [
        "sections=('vmoer',)", "architectures=()", f"seeds={section_seeds}",
        f"vmoer.config={spec}", f"vmoer.overrides={tuple(overrides)!r}"])  # fmt: skip
    return study.run(cfg, workdir)["vmoer"]
