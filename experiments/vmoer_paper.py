"""Paper 2 (VMoER) at paper scale, on a TFDS dataset from your data_dir.

    python experiments/vmoer_paper.py --dataset cifar10 --data_dir ~/tensorflow_datasets \
        --workdir runs/paper2_cifar10 [--seeds 0,1,2,3,4] [--steps 20000]

Prepare the data once on a machine with internet: `tfds build cifar10 --data_dir ...`. Trains the
deterministic MoE and both variational routers (from scratch and retrofitted) per seed through
`routecal.pipeline.study.run` (VMoER stage only) and writes the paper's table into the report.
"""

from __future__ import annotations

import argparse
import pathlib

from routecal.config import load_config
from routecal.pipeline import study

ROOT = pathlib.Path(__file__).resolve().parents[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="cifar10", choices=["mnist", "fashion_mnist", "cifar10"])
    p.add_argument("--data_dir", required=True)
    p.add_argument("--workdir", required=True)
    p.add_argument("--seeds", default="0,1,2,3,4")
    p.add_argument("--steps", type=int, default=20000)
    p.add_argument("--patch_size", type=int, default=4)
    args = p.parse_args()
    vmoer = (f"experiment.seeds=({args.seeds},);data.name=tfds:{args.dataset};data.data_dir={args.data_dir};"
             f"data.patch_size={args.patch_size};train.steps={args.steps}")
    cfg = load_config(
        str(ROOT / "configs" / "study.py"),
        ["architectures=", f"vmoer.overrides={vmoer}",
         f"title=routecal study: VMoER on {args.dataset}"],
    )
    study.run(cfg, args.workdir)
    print(f"report: {pathlib.Path(args.workdir) / 'report.html'}")


if __name__ == "__main__":
    main()
