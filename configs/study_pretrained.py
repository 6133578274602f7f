"""The LM study on an imported Hugging Face MoE checkpoint: routing-conditional calibration of a
pretrained model's tokens, conditioned on its MoE routers.

Run (from the repository root):

    routecal study --config configs/study_pretrained.py:checkpoint=/ckpt/OLMoE-1B-7B-0924 \\
        --workdir runs/study_olmoe --config.model_overrides="('data.tokenizer=/ckpt/OLMoE-1B-7B-0924',)"
    routecal study --config configs/study_pretrained.py:quick --workdir W   # under a minute

Everything of `configs/study_lm.py` (domains in / near / far of the embedded stdlib corpus, the
paper's and the recommended test with sequences as clusters, power, probes, report) with one
model, `hf` (`configs/pretrained_lm.py`: the checkpoint imported by `load_hf`, not trained, one
seed), tested on its router summaries per token: normalised router entropy, top-1 probability
margin and router-logit spread, averaged over the MoE layers (`<name>_mean`) and of the first
MoE layer (`<name>_l0`). Token records carry `doc_id` (the packed document of each token).
`:quick` imports a tiny random OLMoE-layout checkpoint written into the run directory (or the one
given by `checkpoint=DIR`): it checks the pipeline, its numbers are not evidence.
"""

from __future__ import annotations

import common
import ml_collections
import study_lm

FEATURES = ("router_entropy_norm_mean", "top1_margin_mean", "router_logit_spread_mean",
            "router_entropy_norm_l0", "top1_margin_l0")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = common.parse_arg(arg, checkpoint="", quick=False)
    c = study_lm.get_config("quick" if v.quick else None)
    c.title = "routecal study: routing-conditional calibration of an imported MoE checkpoint"
    c.source = "hf"  # an imported checkpoint: nothing is trained
    # no temperature scaling: it recomputes logits from a trained run's checkpoint
    c.sections = ("diagnostics", "power", "probes", "vmoer")
    checkpoint = v.checkpoint or ("random:olmoe" if v.quick else "")
    variant = f"checkpoint={checkpoint}" + (",quick" if v.quick else "")
    c.seeds = (0,)  # an imported model has one set of weights
    c.architectures = ("hf",)
    c.models = ml_collections.ConfigDict(
        {"hf": {"config": f"pretrained_lm.py:{variant}", "overrides": (), "routed": True}})
    c.model_overrides = ()
    c.predict.depth_rows = 0  # no depth attention in an imported (standard-residual) model
    c.diagnostics.features = FEATURES
    c.diagnostics.power_seeds = 1
    if v.quick:
        c.title = ("routecal study on an imported checkpoint (quick smoke run: a tiny random "
                   "checkpoint; it checks the pipeline, its numbers are not evidence)")
        c.diagnostics.features = FEATURES[:3]
        c.diagnostics.n_permutations = 200
        c.diagnostics.power_kwargs.n_datasets = 20
        c.diagnostics.paper_power_datasets = 10
        c.diagnostics.paper_power_permutations = 50
        c.diagnostics.max_tokens = 4000
        c.probes.bandwidth_rules = ("scott",)
        c.probes.sweep_multiples = (1.0,)
        c.probes.max_calib_tokens = 3000
        c.probes.max_test_tokens = 3000
    return c
