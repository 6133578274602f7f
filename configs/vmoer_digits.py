"""VMoER (variational MoE routing, arXiv:2603.09453) on scikit-learn digits, and its experiment.

One model::

    routecal train --config configs/vmoer_digits.py:mfvr --workdir /tmp/vm_mfvr
    routecal train --config configs/vmoer_digits.py:vtsr --workdir /tmp/vm_vtsr
    routecal train --config configs/vmoer_digits.py:det   --workdir /tmp/vm_det
    # retrofit: fit only the routing posterior ("vrouter" parameters) on a trained deterministic MoE
    routecal train --config configs/vmoer_digits.py:mfvr,retrofit --workdir /tmp/vm_mfvr_rf \
        --config.train.init_from=/tmp/vm_det
    routecal predict --workdir /tmp/vm_mfvr

The whole table (deterministic MoE vs both VMoER routers, from scratch and retrofitted, over
`experiment.seeds`; routing stability, ECE, OOD AUROC, FLOP overhead, accuracy)::

    PYTHONPATH=. python experiments/vmoer_table.py [--config configs/vmoer_digits.py:quick]

Variants (after the colon, comma-separated; `configs/common.py:parse_arg`): "mfvr" (default),
"vtsr", "det" (the router vocabulary of `routecal.models.routers`; the old "logit" / "temp"
raise naming them); "retrofit"; "quick" (4 experts, 400 steps of batch 32: a small MoE that learns) or
"tiny" (d=16, 30 steps: seconds per model, for tests).

A small MoE (d_model 32, 2 layers, 8 GELU experts, top-2, every layer MoE) so that the experiment's
15 trainings (5 methods x 3 seeds) take a few minutes on a 2-core CPU.
MEASURED (2-core CPU shared with ~4 other jobs): one model 45-110 s of training, test accuracy
0.944-0.975 (det 0.951 mean over 3 seeds); the full experiment 18 min wall / 7 min CPU (table in
benchmarks/RESULTS.md, "VMoER table on digits"). quick: ~5 min wall under the same load.
"""

import common
import ml_collections

ROUTERS = {"mfvr": "vmoer_mfvr", "vtsr": "vmoer_vtsr", "det": "moe"}
RENAMED = {"logit": "mfvr", "temp": "vtsr"}  # issue 21: one router vocabulary


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    for tok in (t.strip() for t in (arg or "").split(",")):
        if tok in RENAMED:
            raise ValueError(f"config arg: router {tok!r} was renamed; use {RENAMED[tok]!r}")
    v = common.parse_arg(arg, router=tuple(ROUTERS), retrofit=False, quick=False, tiny=False)
    if v.retrofit and v.router == "det":
        raise ValueError("config arg: retrofit needs a variational router (mfvr or vtsr)")
    model = common.moe(common.transformer(d_model=32, n_layers=2, n_heads=2, mlp_dim=64),
                       n_experts=8, mlp_type=ROUTERS[v.router])
    # VMoER options (routecal.models.vmoer.VMoERConfig, without the "vmoer_" prefix)
    model.vmoer = ml_collections.ConfigDict({
        "beta": 1e-2,  # KL weight (mfvr) / regulariser weight (vtsr)
        "prior_sigma": 1.0,
        "init_sigma": 0.3,
        "rank": 0,
        "samples": 8,  # S logit samples averaged inside the router at inference
        "min_temperature": 0.05,
    })
    cfg = common.experiment(
        common.digits_data(), model,
        common.train(lr=3e-3, warmup=50, checkpoint_every=800, eval_every=800, log_every=100),
    )
    if v.retrofit:
        cfg.train.update(trainable="vrouter", steps=300, warmup=20, checkpoint_every=300,
                         eval_every=300)

    # The VMoER section's settings (routecal.study.vmoer; ignored by `routecal train`).
    cfg.experiment = ml_collections.ConfigDict({
        "source": "classifier",  # routecal.training.vmoer_sources
        "seeds": (0, 1, 2),
        "routers": ("det", "mfvr", "vtsr", "mfvr_retrofit", "vtsr_retrofit"),
        "retrofit_steps": 300,
        "retrofit_lr": 3e-3,
        # ensemble members (from scratch or retrofit) are fitted alone until their loss
        # plateaus (`routers.baselines.Plateau`): checked after member_steps steps and every
        # member_check_every after, at most member_max_steps
        "member_steps": 300,
        "member_max_steps": 1200,
        "member_check_every": 50,
        "member_plateau_z": 2.0,  # improvement must beat 2% + z batch-noise SEs
        "stability_noise_std": 0.1,  # Gaussian noise on [0, 1] pixels
        "ood_kinds": ("invert", "pixel_noise"),
        "ood_noise_std": 0.5,
        "mc_samples": 8,  # S stochastic full passes for mutual information
        "n_bins": 15,
    })

    if v.quick:  # a small MoE that still learns, in seconds per model
        cfg.model.update(mlp_dim=32, n_experts=4)
        cfg.train.update(steps=400, batch_size=32, warmup=40, checkpoint_every=400,
                         eval_every=400, log_every=50)
        cfg.experiment.update(seeds=(0, 1), retrofit_steps=50, mc_samples=3, member_steps=50,
                              member_max_steps=200)
    if v.tiny:  # test-size: seconds, does not learn (tests and pipeline smoke checks only)
        cfg.model.update(d_model=16, mlp_dim=16, n_experts=4)
        cfg.train.update(steps=30, batch_size=16, warmup=2, checkpoint_every=30, eval_every=30,
                         log_every=10)
        cfg.experiment.update(seeds=(0, 1), retrofit_steps=10, mc_samples=3, member_steps=10,
                              member_max_steps=10)
    return cfg
