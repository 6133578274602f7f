"""Paper 2 (VMoER) at paper scale, on a TFDS dataset from your data_dir.

    python experiments/vmoer_paper.py --dataset cifar10 --data_dir ~/tensorflow_datasets \
        --workdir runs/paper2_cifar10 [--seeds 0,1,2,3,4] [--steps 20000]

Prepare the data once on a machine with internet: `tfds build cifar10 --data_dir ...`. Trains the
deterministic MoE and both variational routers (from scratch and retrofitted) per seed through
`routecal.study.run.run` (VMoER stage only) and writes the paper's table into the report.
"""

from __future__ import annotations

import paper_setup


def main() -> None:
    args = paper_setup.parse_args(__doc__)
    paper_setup.run_study(
        args,
        "VMoER",
        ["architectures=()", f"vmoer.overrides={paper_setup.data_overrides(args)!r}"],
    )


if __name__ == "__main__":
    main()
