"""The study's typed plans, built once from a study config and validated whole before anything is
written (every model and VMoER config is loaded with its overrides; unknown tests, domains or
features are errors naming the config key). `from_config` picks the plan by the config's unit:
`Plan` (unit "example": the digits study, `configs/study.py`) or `TokenPlan` (unit "token":
language models, `configs/study_lm.py`, `study = "lm"`); both share `ModelSpec`,
`seeds_and_models` and the VMoER section's fields, and `study.run` drives either."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any, ClassVar

import ml_collections

from routecal.config import load_config
from routecal.study.grid import GridSettings
from routecal.study.token_tests import TestSettings


def _strings(value: Any, name: str) -> tuple[str, ...]:
    """A tuple of strings from a tuple/list config value (a packed "a,b" string is an error)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{name}: expected a tuple of strings, got {value!r}")
    out = tuple(value)
    if not all(isinstance(v, str) and v for v in out):
        raise ValueError(f"{name}: expected non-empty strings, got {value!r}")
    return out


@dataclasses.dataclass(frozen=True)
class ModelSpec:
    """One architecture of the study: its config file[:variant] and `key=value` overrides."""

    name: str
    config: str  # absolute path, optionally ":variant"
    overrides: tuple[str, ...]
    routed: bool  # has routing traces to test and probe

    def load(self, seed: int) -> ml_collections.ConfigDict:
        """The training config of this architecture for `seed`."""
        return load_config(self.config, [*self.overrides, f"seed={seed}"])


def seeds_and_models(cfg: ml_collections.ConfigDict) -> tuple[tuple[int, ...], list[ModelSpec]]:
    """The study's seeds and its architectures' ModelSpecs (shared by the digits and LM plans).

    Raises:
      ValueError: no seed, or an architecture not defined in `cfg.models`.
    """
    seeds = tuple(int(s) for s in cfg.seeds)
    if not seeds:
        raise ValueError("seeds: the study needs at least one seed")
    archs = _strings(cfg.architectures, "architectures")
    unknown = [a for a in archs if a not in cfg.models]
    if unknown:
        raise ValueError(
            f"architectures: unknown {unknown}; defined in models: {list(cfg.models)}"
        )
    root = pathlib.Path(cfg.config_dir)
    shared = _strings(cfg.model_overrides, "model_overrides")
    models = []
    for a in archs:
        m = cfg.models[a]
        path, _, variant = m.config.partition(":")
        full = str(root / path) + (f":{variant}" if variant else "")
        own = _strings(m.overrides, f"models.{a}.overrides")
        models.append(ModelSpec(a, full, (*own, *shared), bool(m.routed)))
    return seeds, models


def vmoer_section(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The VMoER section's plan fields from `cfg.vmoer` ({enabled, config, overrides}; the same
    block in the digits and LM study configs): vmoer_config (absolute path[:variant], None when
    disabled) and vmoer_overrides."""
    v = cfg.vmoer
    path, _, variant = str(v.config).partition(":")
    full = str(pathlib.Path(cfg.config_dir) / path) + (f":{variant}" if variant else "")
    return {"vmoer_config": full if v.enabled else None,
            "vmoer_overrides": _strings(v.overrides, "vmoer.overrides")}


def load_vmoer(config: str | None, overrides: Sequence[str], seeds: Sequence[int]
               ) -> ml_collections.ConfigDict:
    """The VMoER section's experiment config: `config` with the study's seeds, then `overrides`."""
    if config is None:
        raise ValueError("vmoer.enabled: the study's VMoER section is disabled")
    return load_config(config, [f"experiment.seeds={tuple(seeds)}", *overrides])


def _shared(cfg: ml_collections.ConfigDict) -> dict[str, Any]:
    """The fields both plans read alike: title, seeds, models, routing features tested, probe
    bandwidth rules and sweep, the VMoER section and the config JSON."""
    seeds, models = seeds_and_models(cfg)
    return dict(
        title=str(cfg.title), seeds=seeds, models=tuple(models),
        features=_strings(cfg.diagnostics.features, "diagnostics.features"),
        bandwidth_rules=_strings(cfg.probes.bandwidth_rules, "probes.bandwidth_rules"),
        sweep_multiples=tuple(float(x) for x in cfg.probes.sweep_multiples),
        **vmoer_section(cfg), config=json.loads(cfg.to_json_best_effort()))


class _Runs:
    """What both plans share: the (model, seed) runs, the routed models, the VMoER section."""

    unit: ClassVar[str]  # the study's unit: "example" or "token" (`study.run.UNITS`)
    seeds: tuple[int, ...]
    models: tuple[ModelSpec, ...]
    vmoer_config: str | None
    vmoer_overrides: tuple[str, ...]

    @property
    def runs(self) -> list[tuple[ModelSpec, int]]:
        return [(m, s) for m in self.models for s in self.seeds]

    @property
    def routed(self) -> list[ModelSpec]:
        return [m for m in self.models if m.routed]

    def load_vmoer(self) -> ml_collections.ConfigDict:
        """The VMoER section's experiment config (`vmoer.config` with the study's seeds)."""
        return load_vmoer(self.vmoer_config, self.vmoer_overrides, self.seeds)

    def _check_configs(self) -> None:
        """Every model config loads with its overrides (a bad key raises), and the VMoER one."""
        for m in self.models:
            m.load(self.seeds[0])
        if self.vmoer_config is not None:
            self.load_vmoer()


@dataclasses.dataclass(frozen=True)
class Plan(_Runs):
    """Everything the study will do, in order: runs, diagnostics, probes, VMoER, report."""

    unit: ClassVar[str] = "example"

    title: str
    seeds: tuple[int, ...]
    models: tuple[ModelSpec, ...]
    features: tuple[str, ...]  # routing features tested (`predictions.routing_features` names)
    splits: tuple[str, ...]  # prediction splits pooled for the tests
    grid: GridSettings
    bandwidth_rules: tuple[str, ...]
    sweep_multiples: tuple[float, ...]
    vmoer_config: str | None  # None: no VMoER stage
    vmoer_overrides: tuple[str, ...]
    config: dict[str, Any] = dataclasses.field(compare=False, hash=False)  # the study config JSON

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> Plan:
        """Builds and validates the plan; raises ValueError naming the bad config key."""
        d = cfg.diagnostics
        plan = cls(
            **_shared(cfg), splits=_strings(d.splits, "diagnostics.splits"),
            grid=GridSettings(int(d.n_permutations), int(d.n_bins), int(d.n_groups),
                              float(d.alpha), int(d.seed), int(d.n_null_figures)),
        )
        plan._check_configs()
        return plan


def _optional_int(value: Any, name: str) -> int | None:
    if value is None or value == 0:
        return None
    if int(value) < 1:
        raise ValueError(f"{name}: expected a positive token count or 0 (all), got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class TokenPlan(_Runs):
    """Runs, then per domain: diagnostics cells, power, probes, temperature; the VMoER section
    (an MoE decoder, every router against det, `study.vmoer`); then results and the report."""

    unit: ClassVar[str] = "token"

    title: str
    seeds: tuple[int, ...]
    models: tuple[ModelSpec, ...]
    calib_split: str  # probes are fitted on this split's tokens (in-domain)
    domains: tuple[tuple[str, str], ...]  # (domain name, predictions split), e.g. ("in", "test")
    features: tuple[str, ...]  # routing summaries tested (`tokens.routing_table` names)
    tests: TestSettings
    diag_seed: int
    diag_max_tokens: int | None  # tokens per diagnostics cell (whole sequences), None = all
    power_seeds: tuple[int, ...]  # the seeds whose cells get a power stage (the first n)
    n_null_figures: int
    bandwidth_rules: tuple[str, ...]
    sweep_multiples: tuple[float, ...]
    multiples: tuple[float, ...]  # bandwidth grid (x Scott) of the CV-NLL and oracle rules
    probe_max_calib_tokens: int | None
    probe_max_test_tokens: int | None  # per domain
    predict_options: dict[str, Any]  # `predict.predict_workdir(lm_options=...)`: thinning
    depth_rows: int  # packed rows per domain for the depth-attention heatmaps (0 = none)
    vmoer_config: str | None  # the VMoER section's MoE decoder experiment (None: no section)
    vmoer_overrides: tuple[str, ...]
    config: dict[str, Any] = dataclasses.field(compare=False, hash=False)

    def power_cells(self) -> list[tuple[str, str, int]]:
        """The cells that get a power stage (those of `power_seeds`)."""
        return [c for c in self.cells() if c[2] in self.power_seeds]

    def cells(self) -> list[tuple[str, str, int]]:
        """(domain, arch, seed) in the fixed order that also numbers the cells' PRNG keys."""
        return [(d, m.name, s) for d, _ in self.domains for m in self.routed for s in self.seeds]

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> TokenPlan:
        domains = tuple(tuple(x.split(":")) for x in _strings(cfg.domains, "domains"))
        if not domains or any(len(x) != 2 or not all(x) for x in domains):
            raise ValueError(f"domains: expected 'name:split' strings, got {cfg.domains!r}")
        if len({x[0] for x in domains}) != len(domains):
            raise ValueError(f"domains: repeated domain name in {cfg.domains!r}")
        d, p = cfg.diagnostics, cfg.probes
        shared = _shared(cfg)
        seeds = shared["seeds"]
        plan = cls(
            **shared, calib_split=str(cfg.calib_split), domains=domains,
            tests=TestSettings(
                tests=_strings(d.tests, "diagnostics.tests"),
                n_permutations=int(d.n_permutations), n_bins=int(d.n_bins),
                n_groups=int(d.n_groups), alpha=float(d.alpha), power=float(d.power),
                power_kwargs=tuple(sorted(d.power_kwargs.to_dict().items())),
                paper_power_datasets=int(d.paper_power_datasets),
                paper_power_permutations=int(d.paper_power_permutations),
                cluster_unit=str(d.get("cluster_unit", "document")),
            ),
            diag_seed=int(d.seed),
            diag_max_tokens=_optional_int(d.max_tokens, "diagnostics.max_tokens"),
            power_seeds=seeds[: _power_seed_count(d.get("power_seeds", len(seeds)), len(seeds))],
            n_null_figures=int(d.n_null_figures),
            multiples=tuple(float(x) for x in p.multiples),
            probe_max_calib_tokens=_optional_int(p.max_calib_tokens, "probes.max_calib_tokens"),
            probe_max_test_tokens=_optional_int(p.max_test_tokens, "probes.max_test_tokens"),
            predict_options={k: v for k, v in cfg.predict.to_dict().items()
                             if k != "depth_rows" and v is not None},
            depth_rows=int(cfg.predict.depth_rows),
        )
        plan._check_configs()
        if plan.vmoer_config is not None:  # its routers are valid names
            from routecal.study import vmoer

            vmoer.check_routers(plan.load_vmoer().experiment)
        return plan


def _power_seed_count(value: object, n_seeds: int) -> int:
    """`diagnostics.power_seeds`: how many seeds (the first ones) get power stages, 1..n_seeds."""
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= n_seeds:
        raise ValueError(f"diagnostics.power_seeds: expected an integer in [1, {n_seeds}] "
                         f"(the number of seeds), got {value!r}")
    return value


def from_config(cfg: ml_collections.ConfigDict) -> Plan | TokenPlan:
    """The plan of a study config: `TokenPlan` when `cfg.study == "lm"`, else `Plan`."""
    return (TokenPlan if cfg.get("study", "") == "lm" else Plan).from_config(cfg)
