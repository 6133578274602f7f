"""AttnRes transformer on scikit-learn digits (8x8 images as 16 tokens of 2x2 patches).

Train, then export predictions and routing traces::

    routecal train --config configs/attnres_digits.py --workdir /tmp/ar_full
    routecal train --config configs/attnres_digits.py:block --workdir /tmp/ar_block
    routecal train --config configs/attnres_digits.py:standard --workdir /tmp/ar_std
    routecal predict --workdir /tmp/ar_full

Variants (after the colon): "full" (default, Full AttnRes), "block" (Block AttnRes, 2 blocks),
"standard" (pre-norm residual control), "quick" (tiny smoke test, a few seconds; any variant can be
combined with quick, e.g. "block,quick").

Measured on the 2-core CPU of the development machine (shared with other jobs, load average ~4-6;
1 device; `time_s` of final_metrics.json excludes start-up), 800 steps:

    variant    test acc   calib acc   test NLL   wall (train + compile)
    full       98.6 %     99.2 %      0.060      58 s
    block      98.1 %     98.6 %      0.067      42 s
    standard   97.5 %     98.1 %      0.065      32 s

Expected: >= 95 % test accuracy for all three (tests/test_train.py, marked slow). `quick` runs 12
steps of a d=16, 2-layer model in a few seconds (near-chance accuracy; for smoke tests only).
"""

import ml_collections


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "full").split(",") if p]
    residuals = [p for p in parts if p in ("full", "block", "standard")]
    unknown = [p for p in parts if p not in ("full", "block", "standard", "quick")]
    if unknown or len(residuals) > 1:
        raise ValueError(f"config arg: unknown variant {arg!r}; use full, block, standard, quick")
    residual = residuals[0] if residuals else "full"

    cfg = ml_collections.ConfigDict()
    cfg.seed = 0

    cfg.data = ml_collections.ConfigDict()
    cfg.data.name = "digits"
    cfg.data.seed = 0
    cfg.data.patch_size = 2
    cfg.data.data_dir = ml_collections.config_dict.placeholder(str)

    cfg.model = ml_collections.ConfigDict()
    cfg.model.d_model = 64
    cfg.model.n_layers = 4
    cfg.model.n_heads = 4
    cfg.model.mlp_dim = 128
    cfg.model.residual = residual
    cfg.model.n_blocks = 2
    cfg.model.dropout = 0.0
    cfg.model.mlp_type = "dense"

    cfg.train = ml_collections.ConfigDict()
    cfg.train.steps = 800
    cfg.train.batch_size = 64
    cfg.train.lr = 2e-3
    cfg.train.warmup = 100
    cfg.train.weight_decay = 0.05
    cfg.train.grad_clip = 1.0
    cfg.train.input_noise = 0.15  # Gaussian pixel noise on training tokens
    cfg.train.checkpoint_every = 400
    cfg.train.eval_every = 400
    cfg.train.log_every = 50
    cfg.train.trainable = "all"
    cfg.train.init_from = ml_collections.config_dict.placeholder(str)

    if "quick" in parts:
        cfg.model.d_model = 16
        cfg.model.n_layers = 2
        cfg.model.n_heads = 2
        cfg.model.mlp_dim = 32
        cfg.train.steps = 12
        cfg.train.batch_size = 16
        cfg.train.warmup = 2
        cfg.train.checkpoint_every = 4
        cfg.train.eval_every = 6
        cfg.train.log_every = 2
    return cfg
