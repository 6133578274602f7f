"""The study's one typed plan, built from a study config and validated whole before anything is
written (every model and VMoER config is loaded with its overrides; unknown tests, domains,
sections or features are errors naming the config key).

What varies between studies is a field of the plan, said explicitly by the config:

    source    where predictions come from: "classifier" (routecal classifiers trained from their
              configs), "decoder" (routecal decoders trained from their configs) or "hf" (an
              imported Hugging Face checkpoint, `token_predict.predict_pretrained`); a user's own prediction files
              go through `routecal diagnose` (`study.diagnose`)
    unit      what one row is: "example" (digits) or "token" (with `seq_id` / `doc_id`)
    domains   (name, predictions split) pairs scored by the sections, e.g. ("in", "test")
    sections  what runs after the predictions (`SECTIONS`)

`study.run` drives every plan; the unit's module (`study.example_unit`, `study.token_unit`)
adapts how predictions are loaded and what one test cell is.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from routecal.config import load_config
from routecal.study.registry import TestSettings

SOURCES = {"classifier": "example", "decoder": "token", "hf": "token"}  # source -> its unit
SECTIONS = ("diagnostics", "power", "probes", "temperature", "vmoer")
UNIT_SECTIONS = {"example": ("diagnostics", "power", "probes", "vmoer"), "token": SECTIONS}


def _strings(value: Any, name: str) -> tuple[str, ...]:
    """A tuple of strings from a tuple/list config value (a packed "a,b" string is an error)."""
    if isinstance(value, str) or not isinstance(value, Sequence):
        raise ValueError(f"{name}: expected a tuple of strings, got {value!r}")
    out = tuple(value)
    if not all(isinstance(v, str) and v for v in out):
        raise ValueError(f"{name}: expected non-empty strings, got {value!r}")
    return out


def _choice(value: Any, name: str, allowed: Sequence[str]) -> str:
    if value not in allowed:
        raise ValueError(f"{name}: expected one of {tuple(allowed)}, got {value!r}")
    return str(value)


def _config_path(cfg: ml_collections.ConfigDict, spec: str) -> str:
    """`file[:variant]` relative to the study config's directory -> absolute path[:variant]."""
    path, _, variant = str(spec).partition(":")
    return str(pathlib.Path(cfg.config_dir) / path) + (f":{variant}" if variant else "")


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
    """The study's seeds and its architectures' ModelSpecs.

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
    shared = _strings(cfg.model_overrides, "model_overrides")
    return seeds, [ModelSpec(a, _config_path(cfg, cfg.models[a].config),
                             (*_strings(cfg.models[a].overrides, f"models.{a}.overrides"),
                              *shared), bool(cfg.models[a].routed)) for a in archs]


def _optional_int(value: Any, name: str) -> int | None:
    if value is None or value == 0:
        return None
    if int(value) < 1:
        raise ValueError(f"{name}: expected a positive token count or 0 (all), got {value!r}")
    return int(value)


@dataclasses.dataclass(frozen=True)
class TokenOptions:
    """What only the token unit has: thinning, power cells, probe token caps, predict options."""

    max_tokens: int | None  # tokens per diagnostics cell (whole clusters), None = all
    power_seeds: tuple[int, ...]  # the seeds whose cells get a power stage (the first n)
    multiples: tuple[float, ...]  # bandwidth grid (x Scott) of the CV-NLL and oracle rules
    probe_max_calib_tokens: int | None
    probe_max_test_tokens: int | None  # per domain
    predict_options: dict[str, Any]  # `predict.predict_workdir(lm_options=...)`: thinning
    depth_rows: int  # packed rows per domain for the depth-attention heatmaps (0 = none)

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict, seeds: tuple[int, ...]
                    ) -> TokenOptions:
        d, p = cfg.diagnostics, cfg.probes
        n = d.power_seeds
        if isinstance(n, bool) or not isinstance(n, int) or not 1 <= n <= len(seeds):
            raise ValueError(f"diagnostics.power_seeds: expected an integer in [1, {len(seeds)}] "
                             f"(the number of seeds), got {n!r}")
        return cls(
            max_tokens=_optional_int(d.max_tokens, "diagnostics.max_tokens"),
            power_seeds=seeds[:n], multiples=tuple(float(x) for x in p.multiples),
            probe_max_calib_tokens=_optional_int(p.max_calib_tokens, "probes.max_calib_tokens"),
            probe_max_test_tokens=_optional_int(p.max_test_tokens, "probes.max_test_tokens"),
            predict_options={k: v for k, v in cfg.predict.to_dict().items()
                             if k != "depth_rows" and v is not None},
            depth_rows=int(cfg.predict.depth_rows))


def _test_settings(cfg: ml_collections.ConfigDict, unit: str) -> TestSettings:
    d = cfg.diagnostics
    clusters = {} if unit == "example" else {"cluster_unit": str(d.cluster_unit)}
    return TestSettings(
        tests=_strings(d.tests, "diagnostics.tests"), n_permutations=int(d.n_permutations),
        n_bins=int(d.n_bins), n_groups=int(d.n_groups), alpha=float(d.alpha), seed=int(d.seed),
        n_null_figures=int(d.n_null_figures), power=float(d.power),
        power_kwargs=tuple(sorted(d.power_kwargs.to_dict().items())),
        paper_power_datasets=int(d.paper_power_datasets),
        paper_power_permutations=int(d.paper_power_permutations), **clusters)


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the study will do: (model, seed) runs from `source`, then `sections` per
    `domains` on `unit` rows, then results.json and the report (module docstring)."""

    title: str
    source: str  # `SOURCES`
    unit: str  # "example" or "token"
    seeds: tuple[int, ...]
    models: tuple[ModelSpec, ...]
    calib_split: str  # probes (and temperature scaling) are fitted on this split
    domains: tuple[tuple[str, str], ...]  # (domain name, predictions split), e.g. ("in", "test")
    sections: tuple[str, ...]  # `SECTIONS` run, in their fixed order
    features: tuple[str, ...]  # routing features tested (`predictions.routing_features` names)
    tests: TestSettings
    bandwidth_rules: tuple[str, ...]
    sweep_multiples: tuple[float, ...]
    vmoer_config: str | None  # the VMoER section's experiment config (None: no section)
    vmoer_overrides: tuple[str, ...]
    tokens: TokenOptions | None  # unit "token" only
    config: dict[str, Any] = dataclasses.field(compare=False, hash=False)  # the study config JSON

    @property
    def runs(self) -> list[tuple[ModelSpec, int]]:
        return [(m, s) for m in self.models for s in self.seeds]

    @property
    def routed(self) -> list[ModelSpec]:
        return [m for m in self.models if m.routed]

    @property
    def splits(self) -> list[str]:
        """The calib split, then every domain's split."""
        return [self.calib_split, *(sp for _, sp in self.domains)]

    def cells(self) -> list[tuple[str, str, int]]:
        """The diagnostics' (domain, arch, seed) cells in the fixed order that numbers their PRNG
        keys (`study.grid`); the example unit pools its splits in one domain, "all"."""
        if "diagnostics" not in self.sections:
            return []
        domains = ["all"] if self.unit == "example" else [d for d, _ in self.domains]
        return [(d, m.name, s) for d in domains for m in self.routed for s in self.seeds]

    def power_cells(self) -> list[tuple[str, str, int]]:
        """The cells that get a power stage (the token unit: those of `tokens.power_seeds`)."""
        seeds = self.tokens.power_seeds if self.tokens else self.seeds
        return [c for c in self.cells() if c[2] in seeds] if "power" in self.sections else []

    def load_vmoer(self) -> ml_collections.ConfigDict:
        """The VMoER section's experiment config: `vmoer.config` with the study's seeds, then
        `vmoer.overrides`."""
        if self.vmoer_config is None:
            raise ValueError("sections: the study has no 'vmoer' section")
        return load_config(self.vmoer_config,
                           [f"experiment.seeds={tuple(self.seeds)}", *self.vmoer_overrides])

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> Plan:
        """Builds and validates the plan; raises ValueError naming the bad config key."""
        source = _choice(cfg.source, "source", tuple(SOURCES))
        unit = _choice(cfg.unit, "unit", UNIT_SECTIONS)
        if SOURCES[source] != unit:
            raise ValueError(f"unit: the {source!r} source gives {SOURCES[source]!r} rows, got "
                             f"{unit!r}")
        sections = _strings(cfg.sections, "sections")
        bad = [s for s in sections if s not in UNIT_SECTIONS[unit]]
        if bad:
            raise ValueError(f"sections: {bad} not available for unit {unit!r} (have "
                             f"{UNIT_SECTIONS[unit]})")
        domains = tuple(tuple(x.split(":")) for x in _strings(cfg.domains, "domains"))
        if not domains or any(len(x) != 2 or not all(x) for x in domains):
            raise ValueError(f"domains: expected 'name:split' strings, got {cfg.domains!r}")
        if len({x[0] for x in domains}) != len(domains):
            raise ValueError(f"domains: repeated domain name in {cfg.domains!r}")
        seeds, models = seeds_and_models(cfg)
        plan = cls(
            title=str(cfg.title), source=source, unit=unit, seeds=seeds, models=tuple(models),
            calib_split=str(cfg.calib_split), domains=domains,
            sections=tuple(s for s in SECTIONS if s in sections),
            features=_strings(cfg.diagnostics.features, "diagnostics.features"),
            tests=_test_settings(cfg, unit),
            bandwidth_rules=_strings(cfg.probes.bandwidth_rules, "probes.bandwidth_rules"),
            sweep_multiples=tuple(float(x) for x in cfg.probes.sweep_multiples),
            vmoer_config=_config_path(cfg, cfg.vmoer.config) if "vmoer" in sections else None,
            vmoer_overrides=_strings(cfg.vmoer.overrides, "vmoer.overrides"),
            tokens=TokenOptions.from_config(cfg, seeds) if unit == "token" else None,
            config=json.loads(cfg.to_json_best_effort()))
        for m in plan.models:  # every model config loads with its overrides (a bad key raises)
            m.load(plan.seeds[0])
        if plan.vmoer_config is not None:  # the section's routers are valid names
            from routecal.study import vmoer

            vmoer.check_routers(plan.load_vmoer().experiment)
        return plan
