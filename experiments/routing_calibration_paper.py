"""Paper 1 (routing-conditional calibration) at paper scale, on a TFDS dataset from your data_dir.

    python experiments/routing_calibration_paper.py --dataset cifar10 --data_dir ~/tensorflow_datasets \
        --workdir runs/paper1_cifar10 [--seeds 0,1,2,3,4] [--steps 20000] [--permutations 10000]

Prepare the data once on a machine with internet: `tfds build cifar10 --data_dir ~/tensorflow_datasets`
(or mnist / fashion_mnist). Runs `routecal.study.run.run` with every AttnRes model trained on that
dataset, the full diagnostic grid (B permutations per test) and every probe, then writes the report.
Large: hours on a CPU, minutes on an accelerator; the study resumes if interrupted.
"""

from __future__ import annotations

import paper_setup


def main() -> None:
    args = paper_setup.parse_args(__doc__, permutations=True)
    paper_setup.run_study(
        args,
        "routing-conditional calibration",
        [
            f"model_overrides={paper_setup.data_overrides(args)!r}",
            "sections=('diagnostics', 'power', 'probes')",
            f"diagnostics.n_permutations={args.permutations}",
        ],
    )


if __name__ == "__main__":
    main()
