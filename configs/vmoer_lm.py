"""VMoER on a language model, scored on multiple-choice QA (Li & Wicker, arXiv:2603.09453).

    PYTHONPATH=. python experiments/vmoer_lm.py --config configs/vmoer_lm.py --workdir W
    PYTHONPATH=. python experiments/vmoer_lm.py --config configs/vmoer_lm.py:quick --workdir /tmp/vl
    PYTHONPATH=. python experiments/vmoer_lm.py --workdir W --report    # markdown of W's results

An MoE byte-level decoder (`routecal.models.decoder`, dropless top-2 of 8 SwiGLU experts in every
layer) pretrained on the embedded stdlib corpus and fine-tuned on the embedded continuation
MCQA; det vs mfvr, lowrank, fcvr, vtsr and the baselines (fixed_temp, mc_dropout, ensemble),
each from scratch and retrofitted on the fine-tuned det model (`*_retrofit`, only the routing
posterior trained); writes `tables/vmoer.csv` (one row per router) and `vmoer_lm_results.json`.
SWAG is not implemented (it needs the weight trajectory).

Scoring (`experiment.scoring`, `routecal.study.vmoer_lm_data`): "loglik" (default) scores
each option by its length-normalised log-likelihood given the context (lm-eval-harness
acc_norm); "letter" is the paper's rule (the answer letter's logit after the prompt, restricted
to A-D). The default is loglik because this tiny decoder does not learn letter scoring (det,
seed 0, in-domain, 512 items, Wilson 95%): letter 0.234 [0.200, 0.273] with this config and
0.250 [0.214, 0.289] after 600 LM + 400 MCQA steps at 128-byte rows; loglik 0.434
[0.391, 0.477] with this config and 0.504 [0.461, 0.547] after 300 + 200 steps at 64 bytes.

Variants (after the colon, comma-separated): "quick" (every router, tiny model, few steps: a
smoke test whose numbers are not evidence), "noretrofit" (from-scratch routers only).
MEASURED (default, 3 seeds x 15 routers, one process, `--workdir W`): 48 min wall, 29.1 CPU-min
(/usr/bin/time: 1420 s user + 327 s sys) on 2 CPU cores shared with another study (load 6-8),
2026-11-30; det accuracy 0.399 (seeds 0.359-0.434, chance 0.25). The table and what it shows
beside the paper's claims: benchmarks/RESULTS.md, "VMoER on a language model, default config"
(printed by `experiments/vmoer_lm.py --workdir W --report`).
"""

import ml_collections

VARIANTS = ("quick", "noretrofit")
ROUTERS = ("det", "mfvr", "lowrank", "fcvr", "vtsr", "fixed_temp", "mc_dropout", "ensemble")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    parts = [p for p in (arg or "").split(",") if p]
    unknown = [p for p in parts if p not in VARIANTS]
    if unknown:
        raise ValueError(f"config arg: unknown variant(s) {unknown}; use any of {VARIANTS}")
    cfg = ml_collections.ConfigDict()

    cfg.data = ml_collections.ConfigDict()
    cfg.data.corpus_seed = 0  # by-file split of the stdlib corpus
    cfg.data.mcqa_seed = 0  # the MCQA items (fixed across model seeds)
    cfg.data.lm_seq_len = 32
    cfg.data.lm_max_bytes = 2_000_000  # pretraining text (first files of the train split)
    cfg.data.context_len = 24  # MCQA: bytes of context ...
    cfg.data.option_len = 8  # ... and of each candidate continuation
    cfg.data.max_prompt_len = 160
    cfg.data.n_train_items = 4096
    cfg.data.n_eval_items = 512  # per domain: in (held-out modules), near (Lib/test), far (prose)

    cfg.model = ml_collections.ConfigDict()
    cfg.model.d_model = 64
    cfg.model.n_layers = 2
    cfg.model.n_heads = 4
    cfg.model.mlp_dim = 128
    cfg.model.n_experts = 8
    cfg.model.top_k = 2
    cfg.model.moe_hidden = 64
    cfg.model.capacity_factor = 0.0  # dropless (HF MoE LMs)
    cfg.model.moe_every = 1
    cfg.model.lb_coef = 1e-2
    cfg.model.z_coef = 1e-3
    # VMoER options (routecal.models.routers.common.VMoERConfig, without "vmoer_")
    cfg.model.vmoer = ml_collections.ConfigDict()
    cfg.model.vmoer.beta = 1e-2
    cfg.model.vmoer.prior_sigma = 1.0
    cfg.model.vmoer.init_sigma = 0.3
    cfg.model.vmoer.samples = 8
    cfg.model.vmoer.head = "mlp"
    cfg.model.vmoer.sigma_param = "log"
    cfg.model.vmoer.rank = 2
    cfg.model.vmoer.vtsr_reg = "entropy"
    cfg.model.vmoer.vtsr_inference = "sample"
    cfg.model.vmoer.fixed_temperature = 1.0
    cfg.model.vmoer.dropout = 0.1
    cfg.model.vmoer.ensemble = 4
    cfg.model.vmoer.aux_to_posterior = False

    cfg.train = ml_collections.ConfigDict()
    cfg.train.batch_size = 32  # LM rows per pretraining step
    cfg.train.mcqa_batch_size = 16  # items per fine-tuning / retrofit step (K sequences each)
    cfg.train.pretrain_steps = 100
    cfg.train.finetune_steps = 100
    cfg.train.retrofit_steps = 60
    cfg.train.lr = 3e-3
    cfg.train.finetune_lr = 1e-3
    cfg.train.retrofit_lr = 3e-3
    cfg.train.warmup = 50
    cfg.train.weight_decay = 0.05
    cfg.train.grad_clip = 1.0

    cfg.experiment = ml_collections.ConfigDict()
    cfg.experiment.seeds = (0, 1, 2)
    # option scoring (routecal.study.vmoer_lm_data.SCORINGS): "loglik" = length-normalised
    # option log-likelihood given the context (lm-eval-harness acc_norm); "letter" = the
    # paper's rule, the answer letter's logit after the prompt restricted to A-D
    cfg.experiment.scoring = "loglik"
    retro = () if "noretrofit" in parts else tuple(f"{r}_retrofit" for r in ROUTERS[1:])
    cfg.experiment.routers = ROUTERS + retro
    cfg.experiment.sigmas = (0.001, 0.005, 0.01, 0.02, 0.05)
    cfg.experiment.stability_sigma = 0.01  # the paper's headline
    cfg.experiment.mc_samples = 2  # sampled passes for mutual information
    cfg.experiment.stability_items = 128  # first in-domain items scored for stability (0: all)
    cfg.experiment.n_bins = 15
    cfg.experiment.eval_batch_size = 64
    cfg.experiment.assemble_only = False  # True: table the saved seed<s>.json files, no training

    if "quick" in parts:
        cfg.data.lm_max_bytes = 200_000
        cfg.data.n_train_items = 512
        cfg.data.n_eval_items = 128
        cfg.model.d_model = 16
        cfg.model.n_heads = 2
        cfg.model.mlp_dim = 32
        cfg.model.n_experts = 4
        cfg.model.moe_hidden = 16
        cfg.model.vmoer.head_hidden = 16
        cfg.train.batch_size = 16
        cfg.train.pretrain_steps = 0  # no LM phase: one compile less per router
        cfg.train.finetune_steps = 40
        cfg.train.retrofit_steps = 15
        cfg.train.warmup = 3
        cfg.experiment.mc_samples = 2
        cfg.experiment.eval_batch_size = 64
    return cfg
