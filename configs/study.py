"""The routecal study: both papers' analyses on the default offline data (scikit-learn digits).

Run (from the repository root):

    routecal study --config configs/study.py --workdir runs/study          # default, 3 seeds
    routecal study --config configs/study.py:quick --workdir runs/quick    # smoke run, 1 seed
    routecal study --config configs/study.py:quick,tiny --workdir W        # test-size pipeline check

Default: standard / Full AttnRes / Block AttnRes x 3 seeds, 30 within-bin permutation tests
(5 routing features x 3 seeds x 2 AttnRes models, B = 2000), the matched probe comparison under every
bandwidth rule, and the VMoER table (deterministic MoE vs both variational routers, from scratch and
retrofitted). Measured on an idle 2-core CPU: 6 min 17 s for the default, 1 min 27 s for
quick,tiny (the former quick). `quick` trains the models' own quick variants (they learn: >= 85%
test accuracy), `tiny` swaps in test-size models that do not.

Override anything from the command line, e.g. `--config.seeds="(0,1,2,3,4)"`,
`--config.diagnostics.n_permutations=10000`, `--config.architectures="('full','block')"`
(lists are tuples; per-model overrides are tuples of "key=value" strings).
"""

from __future__ import annotations

import pathlib

import common
import ml_collections

_HERE = str(pathlib.Path(__file__).resolve().parent)


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    v = common.parse_arg(arg, quick=False, tiny=False)
    c = ml_collections.ConfigDict()
    c.title = "routecal study: routing-conditional calibration on digits"
    c.config_dir = _HERE
    c.source = "classifier"  # classifiers trained here from their configs
    c.unit = "example"
    # What runs after the predictions (the VMoER section: `vmoer.*`; drop a name to skip it).
    c.sections = ("diagnostics", "power", "probes", "vmoer")
    c.seeds = (0, 1, 2)
    c.architectures = ("standard", "full", "block")
    # Each model: a config file (relative to this directory) with an optional variant, a tuple of
    # extra `key=value` overrides, and whether it has routing traces to test.
    c.models = ml_collections.ConfigDict({
        "standard": {"config": "attnres_digits.py:standard", "overrides": (), "routed": False},
        "full": {"config": "attnres_digits.py:full", "overrides": (), "routed": True},
        "block": {"config": "attnres_digits.py:block", "overrides": (), "routed": True},
    })
    c.model_overrides = ()  # applied to every model, e.g. ("train.steps=300",)
    c.calib_split = "calib"  # probes are fitted here
    # domain name : predictions split; the tests pool the calib split and these (nothing is
    # fitted to them), the probes are scored on the first
    c.domains = ("in:test",)

    c.diagnostics = ml_collections.ConfigDict()
    c.diagnostics.features = ("H_mean", "depth_var_mean", "depth_mean_mean", "H_mid", "H_last")
    c.diagnostics.tests = ("within_bin", "conditional", "omnibus")  # `study.registry` names
    c.diagnostics.n_permutations = 2000
    c.diagnostics.n_bins = 15
    c.diagnostics.n_groups = 3
    c.diagnostics.alpha = 0.05
    c.diagnostics.power = 0.8  # each test's minimum detectable gap at this power ("power")
    c.diagnostics.power_kwargs = ml_collections.ConfigDict()  # extra minimum_detectable_gap args
    # the within-bin test's power: planted datasets per gap, permutations per dataset
    c.diagnostics.paper_power_datasets = 40
    c.diagnostics.paper_power_permutations = 100
    c.diagnostics.seed = 0
    c.diagnostics.n_null_figures = 8  # permutation nulls kept in results.json for the figure

    c.probes = ml_collections.ConfigDict()
    c.probes.bandwidth_rules = ("scott", "scott_x0.5", "scott_x2", "cv_nll", "oracle_ece")
    c.probes.sweep_multiples = (0.25, 0.5, 1.0, 2.0, 4.0)

    c.vmoer = ml_collections.ConfigDict()
    c.vmoer.config = "vmoer_digits.py"
    c.vmoer.overrides = ()

    if v.quick:
        c.title = (
            "routecal study (quick smoke run: small models, one seed, few permutations; it checks "
            "the pipeline on models that learn, its numbers are not evidence)"
        )
        c.seeds = (0,)
        for name in ("standard", "full", "block"):
            c.models[name].config += ",quick"
        c.diagnostics.n_permutations = 200
        c.probes.bandwidth_rules = ("scott", "cv_nll", "oracle_ece")
        c.probes.sweep_multiples = (0.5, 1.0, 2.0)
        c.vmoer.config = "vmoer_digits.py:quick"
        c.vmoer.overrides = (
            "experiment.seeds=(0,)",
            'experiment.routers=("det","mfvr","mfvr_retrofit")',
        )
    if v.tiny:  # test-size models (12-step configs trained 150 steps): checks the pipeline only
        c.title = (
            "routecal study (quick smoke run: tiny, undertrained models; it checks the pipeline, "
            "its numbers are not evidence)"
        )
        for name in ("standard", "full", "block"):
            c.models[name].config += ",tiny"
        c.model_overrides = ("train.steps=150", "train.eval_every=150", "train.checkpoint_every=150")
        c.vmoer.config += ":tiny" if ":" not in c.vmoer.config else ",tiny"
    return c
