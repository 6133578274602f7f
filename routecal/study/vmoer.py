"""The VMoER section: for any MoE source, the deterministic router against every router, over seeds.

    routecal study --config configs/study_lm.py:quick --workdir W         # beside the LM study
    routecal study --config configs/study.py --workdir W --config.sections="('vmoer',)" \
        --config.architectures="()"                                       # the section alone

Variational MoE routing (Li & Wicker, arXiv:2603.09453, Sec. 5). `cfg.experiment.source` names
the source of the MoE (`training.vmoer_sources`: "classifier" = the digits classifier trained here,
"decoder" = the MoE decoder trained here and scored on MCQA, "imported" = a Hugging Face
checkpoint scored on the published MCQA files); `cfg.experiment.routers` the routers in the one
vocabulary (`routecal.models.routers`: det, mfvr, lowrank, fcvr, vtsr, fixed_temp, mc_dropout,
ensemble, swag; "<name>_retrofit" fitted on the trained det model, the bare name from scratch, a
source trained elsewhere has only retrofits). The study runs the section (`study.run.vmoer_tasks`:
one stage `vmoer:<seed>` per seed, `seed_stage`; then `assemble`): per seed it obtains det
(trained or imported) and then every router (`Source.fit`), evaluates each (`Source.evaluate`:
accuracy, ECE, NLL, routing stability, OOD AUROCs, ...) into one row with its fit log (beta chosen
on the calib split, ensemble members, SWAG iterates, train time), saving `<section
workdir>/seed<s>.json` after every router: a rerun skips the routers found there (seeds in
parallel: the study's `--worker` or `--distributed`). The table: per router and metric the seed
band (mean, std, min, max, n; `stats.seeds.seed_band`), the relative change of the mean against
det and the seed-band verdict (`stats.seeds.compare_bands`: better / worse only when the [min,
max] bands do not overlap), FLOP overheads per router; written as `tables/vmoer.csv` (one row per
router) and `results["vmoer"]`; its markdown is drawn by `routecal.report.vmoer_lm`.
"""

from __future__ import annotations

import json
import pathlib
import time
from collections.abc import Callable
from typing import Any, Protocol

import ml_collections
from flax import nnx

from routecal import parallel
from routecal.files import workdir as workdir_io
from routecal.report import vmoer_lm
from routecal.report.table import Table
from routecal.report.vmoer_lm import CLAIM_OF, PAPER_CLAIMS
from routecal.stats import seeds as seed_stats
from routecal.training import vmoer_sources
from routecal.training.vmoer_sources import check_routers  # noqa: F401 (the plan checks names)


class Source(Protocol):
    """What the section needs of an MoE source (`training.vmoer_sources`)."""

    names: list[str]  # experiment.routers, det first
    seeds: list[int]
    metrics: tuple[str, ...]  # the table's metrics, in column order
    lower_is_better: frozenset[str]
    share_fits: bool  # multi-host: each router fitted by one process (False: its fit saves
    # collective orbax checkpoints, so every process fits each router together)

    def fit(self, name: str, seed: int, det: Callable[[], nnx.Module]
            ) -> tuple[nnx.Module, dict[str, Any]]:
        """The model of router `name` at `seed` (trained, imported or fitted on `det()`) and its
        fit log (entries of the router's row: train_time_s, beta, members, ...)."""
        ...

    def evaluate(self, model: nnx.Module, seed: int) -> dict[str, Any]: ...

    def overheads(self) -> dict[str, dict[str, float]]:
        """Per router name: its FLOP overhead entries (added to every seed's row)."""
        ...

    def extras(self) -> dict[str, Any]:
        """Entries of the results besides the table (config, scoring, FLOP summary, ...)."""
        ...


def run_seed(source: Source, seed: int, done: dict[str, Any] | None = None,
             on_router: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
    """Every router of `source` at one seed, det first; the routers in `done` are kept as they
    are. Each row: `source.evaluate` + the fit log + wall and CPU seconds (compilation included).
    `on_router(runs)` after each router (the section saves its seed file there)."""
    runs, det = dict(done or {}), {}

    def det_model() -> nnx.Module:
        if "model" not in det:
            det["model"] = source.fit("det", seed, det_model)[0]
        return det["model"]

    def one(name: str) -> dict[str, Any]:
        w0, p0 = time.perf_counter(), time.process_time()
        model, log = source.fit(name, seed, det_model)
        if name == "det":
            det["model"] = model
        res = {**source.evaluate(model, seed), **log}
        res["wall_s"], res["cpu_s"] = time.perf_counter() - w0, time.process_time() - p0
        return res

    def record(name: str, res: dict[str, Any]) -> None:
        runs[name] = res
        keys = ("accuracy", "ece", "stability", "ood_auroc", "ood_auroc_near", "ood_auroc_far")
        print(f"[vmoer] seed {seed} {name}: "
              + " ".join(f"{k}={res[k]:.4f}" for k in keys if k in res), flush=True)
        if on_router is not None:
            on_router(runs)

    todo = [n for n in source.names if n not in runs]
    if parallel.process_count() == 1 or not source.share_fits:
        # one by one, each saved as it finishes (`on_router`); multi-host: by every process
        for name in todo:
            record(name, one(name))
        return runs
    # multi-host: det on every process together (each router starts from it), then each other
    # router fitted once, by one process (`parallel.share`)
    if "det" in todo:
        record("det", one("det"))
    det_model()
    others = [n for n in todo if n != "det"]
    for name, res in zip(others, parallel.share(lambda k: one(others[k]), len(others),
                                                f"vmoer_seed{seed}"), strict=True):
        record(name, res)
    return runs


def seed_stage(source: Source, seed: int, workdir: pathlib.Path) -> dict[str, Any]:
    """The study's `vmoer:<seed>` stage: {"runs": `run_seed`} with the routers found in
    `workdir/seed<s>.json` kept, that file saved after every router (atomically; multi-host:
    process 0 writes), so a stopped stage resumes router by router."""
    seed_file = workdir / f"seed{seed}.json"
    done = workdir_io.read_json(seed_file, "vmoer") if seed_file.exists() else {}

    def save(runs: dict[str, Any]) -> None:
        if parallel.is_primary():
            workdir_io.write_text(seed_file, json.dumps(runs, default=float) + "\n")

    return {"runs": run_seed(source, seed, done, on_router=save)}


def write_csv(table: dict[str, dict[str, Any]], names: list[str], metrics: tuple[str, ...],
              path: pathlib.Path) -> None:
    """One row per router: <metric>_mean, _std, _min, _max, _rel_pct, _verdict, n_seeds and the
    paper's claims; written whole, atomically (`report.table.Table.write_csv`)."""
    keys = ("mean", "std", "min", "max", "rel_change_pct", "verdict")
    header = ["router", "n_seeds", *[f"{m}_{k}" for m in metrics for k in (
        "mean", "std", "min", "max", "rel_pct", "verdict")], *[f"paper_{k}" for k in PAPER_CLAIMS]]
    rows = [[name, max((b["n"] for b in table[name].values()), default=0),
             *[table[name].get(m, {}).get(k, "") for m in metrics for k in keys],
             *PAPER_CLAIMS.values()] for name in names]
    path.parent.mkdir(parents=True, exist_ok=True)
    Table("vmoer", "", header, [[str(c) for c in r] for r in rows]).write_csv(path)


def assemble(source: Source, per_run: dict[str, dict[int, dict[str, Any]]],
             csv_path: pathlib.Path, write: bool = True) -> dict[str, Any]:
    """The section's results from per_run[router][seed] (FLOP overheads added in place):
    {per_run, table, markdown, paper_claims, runs_wall_s, runs_cpu_s, **source.extras()};
    writes `csv_path` when `write` (multi-host: process 0)."""
    names, over = source.names, source.overheads()
    for name in names:
        for r in per_run[name].values():
            r.update(over[name])
    table = seed_stats.band_table(per_run, source.metrics, source.lower_is_better)
    if write:
        write_csv(table, names, source.metrics, csv_path)
    cols = [m for m in (*CLAIM_OF, "ood_auroc", "flops_overhead_pct", "accuracy")
            if m in source.metrics]
    return {
        "per_run": per_run, "table": table, "markdown": vmoer_lm.markdown(table, names, cols),
        "paper_claims": PAPER_CLAIMS,
        # summed over every (router, seed) run, whichever process trained it
        "runs_wall_s": sum(r.get("wall_s", 0.0) for v in per_run.values() for r in v.values()),
        "runs_cpu_s": sum(r.get("cpu_s", 0.0) for v in per_run.values() for r in v.values()),
        **source.extras(),
    }  # fmt: skip


def make_source(cfg: ml_collections.ConfigDict, workdir: pathlib.Path) -> Source:
    """The source `cfg.experiment.source` names: "classifier", "decoder" (`training.vmoer_sources`)
    or "imported" (`training.vmoer_imported`)."""
    kind = str(cfg.experiment.source)
    if kind == "classifier":
        return vmoer_sources.ClassifierSource(cfg, workdir)
    if kind == "decoder":
        return vmoer_sources.DecoderSource(cfg)
    if kind == "imported":
        from routecal.training.vmoer_imported import ImportedSource  # loads the checkpoint's stack

        return ImportedSource(cfg, workdir)
    raise ValueError(f"experiment.source: unknown {kind!r}; use classifier, decoder or imported")

