"""VMoER (variational MoE routing, arXiv:2603.09453) on scikit-learn digits, and its experiment.

One model::

    routecal train --config configs/vmoer_digits.py:logit --workdir /tmp/vm_logit
    routecal train --config configs/vmoer_digits.py:temp  --workdir /tmp/vm_temp
    routecal train --config configs/vmoer_digits.py:det   --workdir /tmp/vm_det
    # retrofit: fit only the routing posterior ("vrouter" parameters) on a trained deterministic MoE
    routecal train --config configs/vmoer_digits.py:logit,retrofit --workdir /tmp/vm_logit_rf \
        --config.train.init_from=/tmp/vm_det
    routecal predict --workdir /tmp/vm_logit

The whole table (deterministic MoE vs both VMoER routers, from scratch and retrofitted, over
`experiment.seeds`; routing stability, ECE, OOD AUROC, FLOP overhead, accuracy)::

    PYTHONPATH=. python experiments/vmoer_table.py [--config configs/vmoer_digits.py:quick]

Variants (after the colon, comma-separated): "logit" (default), "temp", "det", "retrofit",
"quick" (tiny smoke test: seconds per model).

A small MoE (d_model 32, 2 layers, 8 GELU experts, top-2, every layer MoE) so that the experiment's
15 trainings (5 methods x 3 seeds) take a few minutes on a 2-core CPU.
MEASURED (2-core CPU shared with ~4 other jobs): one model 45-110 s of training, test accuracy
0.944-0.975 (det 0.951 mean over 3 seeds); the full experiment 18 min wall / 7 min CPU (table in
benchmarks/RESULTS.md, "VMoER table on digits"). quick: ~5 min wall under the same load.
"""

import ml_collections

VARIANTS = ("logit", "temp", "det", "retrofit", "quick")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "logit").split(",") if p]
    unknown = [p for p in parts if p not in VARIANTS]
    routers = [p for p in parts if p in ("logit", "temp", "det")]
    if unknown or len(routers) > 1:
        raise ValueError(f"config arg: unknown variant {arg!r}; use any of {VARIANTS}")
    router = routers[0] if routers else "logit"
    if "retrofit" in parts and router == "det":
        raise ValueError("config arg: retrofit needs a variational router (logit or temp)")

    cfg = ml_collections.ConfigDict()
    cfg.seed = 0

    cfg.data = ml_collections.ConfigDict()
    cfg.data.name = "digits"
    cfg.data.seed = 0
    cfg.data.patch_size = 2
    cfg.data.data_dir = ml_collections.config_dict.placeholder(str)

    cfg.model = ml_collections.ConfigDict()
    cfg.model.d_model = 32
    cfg.model.n_layers = 2
    cfg.model.n_heads = 2
    cfg.model.mlp_dim = 64
    cfg.model.residual = "standard"
    cfg.model.n_blocks = 2
    cfg.model.dropout = 0.0
    cfg.model.mlp_type = {"logit": "vmoer_logit", "temp": "vmoer_temp", "det": "moe"}[router]
    cfg.model.n_experts = 8
    cfg.model.top_k = 2
    cfg.model.capacity_factor = 1.25
    cfg.model.moe_every = 1
    cfg.model.lb_coef = 1e-2
    cfg.model.z_coef = 1e-3
    # VMoER options (routecal.models.vmoer.VMoERConfig, without the "vmoer_" prefix)
    cfg.model.vmoer = ml_collections.ConfigDict()
    cfg.model.vmoer.beta = 1e-2  # KL weight (logit) / log-temperature prior weight (temp)
    cfg.model.vmoer.prior_sigma = 1.0
    cfg.model.vmoer.init_sigma = 0.3
    cfg.model.vmoer.rank = 0
    cfg.model.vmoer.samples = 8  # S logit samples averaged inside the router at inference
    cfg.model.vmoer.min_temperature = 0.05

    cfg.train = ml_collections.ConfigDict()
    cfg.train.steps = 800
    cfg.train.batch_size = 64
    cfg.train.lr = 3e-3
    cfg.train.warmup = 50
    cfg.train.weight_decay = 0.05
    cfg.train.grad_clip = 1.0
    cfg.train.checkpoint_every = 800
    cfg.train.eval_every = 800
    cfg.train.log_every = 100
    cfg.train.trainable = "all"
    cfg.train.init_from = ml_collections.config_dict.placeholder(str)

    if "retrofit" in parts:
        cfg.train.trainable = "vrouter"
        cfg.train.steps = 300
        cfg.train.warmup = 20
        cfg.train.checkpoint_every = 300
        cfg.train.eval_every = 300

    # Settings of routecal.pipeline.vmoer.run_vmoer_experiment (ignored by `routecal train`).
    cfg.experiment = ml_collections.ConfigDict()
    cfg.experiment.seeds = (0, 1, 2)
    cfg.experiment.methods = ("det", "logit", "temp", "logit_retrofit", "temp_retrofit")
    cfg.experiment.retrofit_steps = 300
    cfg.experiment.retrofit_lr = 3e-3
    cfg.experiment.stability_noise_std = 0.1  # Gaussian noise on [0, 1] pixels
    cfg.experiment.ood_kinds = ("invert", "pixel_noise")
    cfg.experiment.ood_noise_std = 0.5
    cfg.experiment.mc_samples = 8  # S stochastic full passes for mutual information
    cfg.experiment.n_bins = 15

    if "quick" in parts:
        cfg.model.d_model = 16
        cfg.model.mlp_dim = 16
        cfg.model.n_experts = 4
        cfg.train.steps = 30
        cfg.train.batch_size = 16
        cfg.train.warmup = 2
        cfg.train.checkpoint_every = 30
        cfg.train.eval_every = 30
        cfg.train.log_every = 10
        cfg.experiment.seeds = (0, 1)
        cfg.experiment.retrofit_steps = 10
        cfg.experiment.mc_samples = 3
    return cfg
