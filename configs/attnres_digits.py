"""AttnRes transformer on scikit-learn digits (8x8 images as 16 tokens of 2x2 patches).

Train, then export predictions and routing traces::

    routecal train --config configs/attnres_digits.py --workdir /tmp/ar_full
    routecal train --config configs/attnres_digits.py:block --workdir /tmp/ar_block
    routecal train --config configs/attnres_digits.py:standard --workdir /tmp/ar_std
    routecal predict --workdir /tmp/ar_full

Variants (after the colon, comma-separated; `configs/common.py:parse_arg`): "full" (default, Full
AttnRes), "block" (Block AttnRes, 2 blocks), "standard" (pre-norm residual control); "quick" (a
small model that learns, for smoke runs) and "tiny" (test-size, does not learn), combinable with
any residual, e.g. "block,quick".

Measured on the 2-core CPU of the development machine (shared with other jobs, load average ~4-6;
1 device; `time_s` of final_metrics.json excludes start-up), 800 steps:

    variant    test acc   calib acc   test NLL   wall (train + compile)
    full       98.6 %     99.2 %      0.060      58 s
    block      98.1 %     98.6 %      0.067      42 s
    standard   97.5 %     98.1 %      0.065      32 s

Expected: >= 95 % test accuracy for all three (tests/training/test_train.py, marked slow).

`quick` (d_model 32, 2 layers, 400 steps of batch 32): 89.4 % test accuracy (full, seed 0), 23.5 s
of CPU time in all (22.4 s user + 1.1 s sys, start-up and compile included), i.e. well under 60 s
on an idle 2-core CPU; measured with the 2 cores shared by ~7 developers (load average ~28), where
it took 343 s of wall time (tests/test_configs.py::test_quick_attnres_learns, marked slow).
`tiny` runs 12 steps of a d=16 model in a few seconds (near-chance accuracy; for tests only).
"""

import common
import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = common.parse_arg(arg, residual=("full", "block", "standard"), quick=False, tiny=False)
    cfg = common.experiment(
        common.digits_data(),
        common.transformer(residual=v.residual),
        common.train(input_noise=0.15),
    )
    return common.shrink(cfg, quick=v.quick, tiny=v.tiny)
