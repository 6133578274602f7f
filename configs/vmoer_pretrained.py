"""VMoER on an imported Hugging Face MoE checkpoint, scored on the published MCQA benchmarks.

    PYTHONPATH=. python experiments/vmoer_pretrained.py --checkpoint /ckpt/granite-3.1-3b-a800m \
        --train obqa/train.jsonl:openbookqa --test obqa/test.jsonl:openbookqa \
        --near arc/ARC-Easy-Test.jsonl:arc --far medmcqa/dev.json:medmcqa --workdir W
    PYTHONPATH=. python experiments/vmoer_lm.py --config configs/vmoer_pretrained.py --workdir W \
        checkpoint=/ckpt/granite-3.1-3b-a800m data.train=obqa/train.jsonl:openbookqa ...

The VMoER section (`routecal.study.vmoer`, source "imported", `training.vmoer_imported`): the
imported deterministic router vs every router retrofitted on the checkpoint (only the routing
posterior trained on the MCQA train split), Li & Wicker's table (arXiv:2603.09453, Sec. 5):
stability at sigma = 0.01, ECE, MCE, NLL, Brier, OOD AUROC near / far (entropy, max-prob, MI,
gating entropy, router-logit variance), the router's FLOP overhead at the checkpoint's layer
shape, accuracy; seed bands and the change against det. Nothing downloads: bring the checkpoint
directory (config.json, *.safetensors, tokenizer.json) and the files (PATH:FORMAT, FORMAT one of
`routecal.data.mcqa_formats.FORMATS`, or tfds:NAME[:SPLIT] prepared in $TFDS_DATA_DIR). Writes
W/tables/vmoer.csv, W/results.json (its "vmoer"), the report, W/vmoer/seed<s>.json and the
resumable retrofit cells W/vmoer/<router>/seed<s>/. What has run: only the tiny CI smoke test
(`tests/models/pretrained/test_vmoer_pretrained_exp.py`); no paper-scale number exists yet.
"""

import ml_collections

ROUTERS = ("mfvr", "fcvr", "vtsr")  # the default retrofits (any registry router works)


def get_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.checkpoint = ""  # the checkpoint directory (required)
    cfg.data = ml_collections.ConfigDict(dict(
        train="", test="", near="", far="",  # PATH:FORMAT[,PATH:FORMAT...] (near / far optional)
        calib="",  # calibration split: with it, beta is chosen per router from beta_grid
        max_questions=0,  # per split (0 = all)
        max_len=512,  # prompt tokens kept (the last ones)
    ))  # fmt: skip
    cfg.model = ml_collections.ConfigDict(dict(dtype="bfloat16", mesh=""))  # mesh: "fsdp=8"
    # VMoER options (routecal.models.routers.common.VMoERConfig without "vmoer_"); the library's
    # defaults where absent
    cfg.model.vmoer = ml_collections.ConfigDict()
    cfg.train = ml_collections.ConfigDict(dict(steps=500, lr=1e-3, batch_size=8,
                                               checkpoint_every=100))  # fmt: skip
    # ensemble members: fitted alone until their loss plateaus (`routers.baselines.Plateau`:
    # checked after member_steps and every member_check_every, at most member_max_steps)
    cfg.train.update(member_steps=500, member_max_steps=2000, member_check_every=50,
                     member_plateau_z=2.0)
    cfg.experiment = ml_collections.ConfigDict(dict(
        source="imported",
        routers=("det", *(f"{r}_retrofit" for r in ROUTERS)),
        seeds=(0, 1, 2),
        beta_grid=(1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1),  # tried on data.calib (ignored without)
        sigmas=(0.001, 0.005, 0.01, 0.02, 0.05),
        stability_sigma=0.01,  # the paper's headline
        stability_protocol="layer_input",  # or "all_moe_inputs"
        stability_items=0,  # first in-domain items scored for stability (0: all)
        ood_scores=("entropy", "max_prob", "mi", "gating_entropy", "router_logit_variance"),
        mc_samples=8,  # sampled passes for mutual information
        n_bins=15,
        eval_batch_size=8,
    ))  # fmt: skip
    return cfg
