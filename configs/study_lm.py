"""The routecal study at language-model scale: AttnRes decoders on the embedded stdlib corpus.

Run (from the repository root):

    routecal study --config configs/study_lm.py --workdir runs/study_lm          # default
    routecal study --config configs/study_lm.py:quick --workdir runs/study_lm_q  # smoke run

Default: standard / Full AttnRes / Block AttnRes byte-level decoders (`configs/lm_stdlib.py`)
x 3 seeds; token-level predictions for the calib split and three test domains (in: held-out stdlib
modules, near: `Lib/test` files, far: pydoc prose), >= 200k tokens each; the diagnostic grid
(7 routing summaries incl. two position-aware ones x 3 seeds x 2 AttnRes models x 3 domains, the
paper's test and the recommended test with documents as clusters, B = 10,000, Holm and BH, each
test's minimum detectable gap at 80% power); every probe fitted on calib tokens and scored per
domain with the NW bandwidth sweep; the report with power curves, reliability diagrams, nulls,
bandwidth sensitivity and depth-attention heatmaps per domain. The VMoER section (`vmoer.*`):
an MoE decoder (configs/vmoer_lm.py), det against every router retrofitted on it, scored on
MCQA; `W/tables/vmoer.csv` holds one row per router (`--config.sections` without "vmoer" skips it).

Measured (2-core CPU): the quick variant in 1 min 39 s wall from a fresh workdir on the idle
machine (136 CPU-s, peak RSS 1.5 GB) before the VMoER section, its decoders at about 4.4 bits per
byte (not evidence); the section adds about 170 CPU-s, mostly XLA compiles (312 vs 141 CPU-s at
load ~10, peak RSS 2.5 GB; benchmarks/RESULTS.md, "One test registry and the LM study's VMoER
section"). The
default's time, models and verdicts: the README block generated from our run (`routecal:found-lm`,
`experiments/readme_numbers.py --block found-lm`) and benchmarks/RESULTS.md, "The LM study,
default config". A second process, `routecal study ... --worker`, shares the analysis stages once
the decoders are trained.

Override anything, e.g. `--config.seeds="(0,1,2,3,4)"`, `--config.diagnostics.max_tokens=50000`,
`--config.model_overrides="('predict.every=4',)"` (thinning, if the LM config names it so).
"""

from __future__ import annotations

import pathlib

import common
import ml_collections
import numpy as np

_HERE = str(pathlib.Path(__file__).resolve().parent)

# The quick study's VMoER section on top of vmoer_lm.py:quick (every router, fewer steps/items).
VMOER_QUICK = ("experiment.beta_grid=(0.01,)", "experiment.sigmas=(0.01,)",
               "experiment.stability_items=32", "data.n_eval_items=64", "data.n_train_items=256",
               "data.n_calib_items=32", "train.finetune_steps=30", "train.retrofit_steps=10",
               "train.member_steps=10", "train.member_max_steps=10", "model.vmoer.ensemble=2", "model.vmoer.samples=4")

FEATURES = ("H_mean", "depth_var_mean", "depth_mean_mean", "H_mid", "H_last",
            "H_mean_vs_seq", "depth_var_mean_vs_seq")


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = common.parse_arg(arg, quick=False)
    c = ml_collections.ConfigDict()
    c.title = "routecal study: token-level routing-conditional calibration on the stdlib corpus"
    c.config_dir = _HERE
    c.source = "decoder"  # routecal decoders trained here from their configs
    c.unit = "token"
    # What runs after the predictions (the VMoER section: `vmoer.*`; drop a name to skip it).
    c.sections = ("diagnostics", "power", "probes", "temperature", "vmoer")
    c.seeds = (0, 1, 2)
    c.architectures = ("standard", "full", "block")
    # Each model: a config file (relative to this directory) with its variant, extra `key=value`
    # overrides, and whether it has routing traces to test.
    c.models = ml_collections.ConfigDict({
        "standard": {"config": "lm_stdlib.py:standard", "overrides": (), "routed": False},
        "full": {"config": "lm_stdlib.py:full", "overrides": (), "routed": True},
        "block": {"config": "lm_stdlib.py:block", "overrides": (), "routed": True},
    })
    # Applied to every model: 400 steps (lm_stdlib's standard decoder reaches about 2.3 test bits per
    # byte there; its 800-step default 2.13) and evaluation splits capped at 208,000 bytes, i.e.
    # >= 200k predicted tokens per split (calib, in, near, far), to keep the default study in hours
    # on a 2-core CPU. The documents are the test's independent units: the first 208 kB of each
    # split held 2 (in) and 7 (near) documents, too few to test anything, so each split is a
    # seeded sample of documents cut to their first 4 kB (>= 50 documents per split).
    c.model_overrides = ("train.steps=400", "train.eval_every=400", "train.checkpoint_every=200",
                         "data.max_bytes=208000", "data.max_doc_bytes=4096",
                         "data.eval_doc_order=shuffle")
    # Token predictions (`predict.predict_workdir(lm_options=...)`): keep positions t with
    # t % every == 0 and t >= min_position, at most max_tokens per split (None = all).
    c.predict = ml_collections.ConfigDict()
    c.predict.every = 1
    c.predict.min_position = 0
    c.predict.max_tokens = ml_collections.config_dict.placeholder(int)
    c.predict.depth_rows = 64  # packed rows per domain for the depth-attention heatmaps
    c.calib_split = "calib"  # probes are fitted here (in-domain tokens)
    c.domains = ("in:test", "near:near", "far:far")  # domain name : predictions split

    c.diagnostics = ml_collections.ConfigDict()
    # The omnibus test (non-monotone and sign-changing effects) beside the monotone one.
    c.diagnostics.tests = ("within_bin", "conditional", "omnibus")
    c.diagnostics.features = FEATURES
    c.diagnostics.n_permutations = 10_000
    c.diagnostics.n_bins = 15
    c.diagnostics.n_groups = 3
    c.diagnostics.alpha = 0.05
    c.diagnostics.power = 0.8
    # The recommended test's power: `stats.diagnostics.minimum_detectable_gap` (extra arguments
    # here, e.g. n_datasets); the paper test's power on the same planted datasets:
    c.diagnostics.power_kwargs = ml_collections.ConfigDict({"n_datasets": 200})
    # Power stages for the cells of the first `power_seeds` seeds only: the planted design depends
    # on the tokens' confidence and correctness, which the seeds' decoders share closely; each
    # power cell on 200k tokens costs about 3 min on the idle 2-core CPU.
    c.diagnostics.power_seeds = 1
    c.diagnostics.paper_power_datasets = 40
    c.diagnostics.paper_power_permutations = 100
    # The recommended test's clusters (independent units): "document" (each token's source file
    # or page, `doc_id`; rows cut from one document share its style and difficulty) or "row" (the
    # packed 256-byte row, `seq_id`: anti-conservative, benchmarks/RESULTS.md "Token clusters").
    c.diagnostics.cluster_unit = "document"
    c.diagnostics.seed = 0
    c.diagnostics.max_tokens = 0  # tokens per cell, whole sequences (0 = all)
    c.diagnostics.n_null_figures = 8

    c.probes = ml_collections.ConfigDict()
    c.probes.bandwidth_rules = ("scott", "scott_x0.5", "scott_x2", "cv_nll", "oracle_ece")
    c.probes.sweep_multiples = (0.25, 0.5, 1.0, 2.0, 4.0)
    # NW costs N_calib x N_test kernel evaluations per bandwidth (the engine: ~3e9 per second on
    # an idle 2-core CPU, benchmarks/RESULTS.md): probes are fitted (and CV-NLL run) on 30k calib
    # tokens and scored on 70k tokens per domain (210k NW test points per run), whole sequences;
    # 0 = every token. CV-NLL and the oracle search 7 Scott multiples (factor-2 steps).
    c.probes.max_calib_tokens = 30_000
    c.probes.max_test_tokens = 70_000
    c.probes.multiples = tuple(float(m) for m in np.geomspace(1 / 8, 8, 7))  # CV-NLL, oracle

    # The VMoER section (Li & Wicker, arXiv:2603.09453): the study's decoders have no expert
    # router, so the section's source is the MoE decoder of `config` (configs/vmoer_lm.py, the
    # study's seeds, then `overrides`): det trained once per seed on the stdlib corpus and its
    # MCQA, every router of its `experiment.routers` retrofitted on it, scored on in/near/far
    # MCQA; W/tables/vmoer.csv holds one row per router. One stage per seed (`vmoer:<seed>`).
    c.vmoer = ml_collections.ConfigDict()
    c.vmoer.config = "vmoer_lm.py"
    c.vmoer.overrides = ()

    if v.quick:
        c.title = ("routecal LM study (quick smoke run: tiny, briefly trained decoders; it checks "
                   "the pipeline, its numbers are not evidence)")
        c.seeds = (0,)
        for name in ("standard", "full", "block"):
            c.models[name].config += ",quick"
        # lm_stdlib's quick models, trained long enough to learn (well below 8 bits per byte).
        c.model_overrides = ("train.steps=150", "train.eval_every=150",
                             "train.checkpoint_every=150", "train.log_every=50")
        c.diagnostics.features = ("H_mean", "depth_var_mean", "H_mean_vs_seq")
        c.diagnostics.n_permutations = 1000
        c.diagnostics.power_kwargs.n_datasets = 50
        c.diagnostics.paper_power_datasets = 20
        c.diagnostics.paper_power_permutations = 100
        c.diagnostics.max_tokens = 20_000
        # lm_stdlib's quick evaluation splits are 2 kB, one document each: rows are the only
        # clusters there are (the smoke run checks the pipeline, not the level).
        c.diagnostics.cluster_unit = "row"
        c.probes.bandwidth_rules = ("scott", "cv_nll", "oracle_ece")
        c.probes.sweep_multiples = (0.5, 1.0, 2.0)
        c.probes.max_calib_tokens = 10_000
        c.probes.max_test_tokens = 10_000
        # every router retrofitted on a tiny MoE decoder (vmoer_lm's quick variant), fewer
        # fitting steps and items, one beta: the smoke run's cost is mostly compilation
        c.vmoer.config = "vmoer_lm.py:quick"
        c.vmoer.overrides = VMOER_QUICK
    return c
