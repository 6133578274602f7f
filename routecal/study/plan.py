"""The study's typed plan: built once from a study config (`configs/study.py`) and validated whole
before anything is written (every model and VMoER config is loaded with its overrides)."""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence
from typing import Any

import ml_collections

from routecal.config import load_config
from routecal.study.grid import GridSettings


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


@dataclasses.dataclass(frozen=True)
class Plan:
    """Everything the study will do, in order: runs, diagnostics, probes, VMoER, report."""

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

    @property
    def runs(self) -> list[tuple[ModelSpec, int]]:
        return [(m, s) for m in self.models for s in self.seeds]

    @property
    def routed(self) -> list[ModelSpec]:
        return [m for m in self.models if m.routed]

    @property
    def n_stages(self) -> int:
        """train + predict per run, diagnostics, probes per routed run, VMoER, results/report."""
        n_probes = len(self.routed) * len(self.seeds)
        return 2 * len(self.runs) + 1 + n_probes + int(self.vmoer_config is not None) + 1

    def load_vmoer(self) -> ml_collections.ConfigDict:
        return load_vmoer(self.vmoer_config, self.vmoer_overrides, self.seeds)

    @classmethod
    def from_config(cls, cfg: ml_collections.ConfigDict) -> Plan:
        """Builds and validates the plan; raises ValueError naming the bad config key."""
        seeds, models = seeds_and_models(cfg)
        d, p = cfg.diagnostics, cfg.probes
        plan = cls(
            title=str(cfg.title),
            seeds=seeds,
            models=tuple(models),
            features=_strings(d.features, "diagnostics.features"),
            splits=_strings(d.splits, "diagnostics.splits"),
            grid=GridSettings(int(d.n_permutations), int(d.n_bins), int(d.n_groups),
                              float(d.alpha), int(d.seed), int(d.n_null_figures)),
            bandwidth_rules=_strings(p.bandwidth_rules, "probes.bandwidth_rules"),
            sweep_multiples=tuple(float(x) for x in p.sweep_multiples),
            **vmoer_section(cfg),
            config=json.loads(cfg.to_json_best_effort()),
        )
        for m in plan.models:  # every model config loads with its overrides (a bad key raises)
            m.load(seeds[0])
        if plan.vmoer_config is not None:
            plan.load_vmoer()
        return plan
