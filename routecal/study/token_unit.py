"""The token unit of the study (language models, `configs/study_lm.py`): stage order and results.

`study.run` drives it (the same driver as the example unit, `study.example_unit`). Per (model,
seed): `run:` (train or import a decoder and write its token predictions, `token_stages`) and
`summary:`; then `analysis`: one `diag:` stage per (domain, model, seed, routing summary), `power:`
per cell of the first `diagnostics.power_seeds` seeds, `probes:` and `temperature:` per run
(`study.temperature`, from the reloaded decoder), `vmoer:<seed>` per seed when `vmoer.enabled`
(an MoE decoder's det router against every router, `study.vmoer_decoder`). The recommended test's
clusters are documents by default (`diagnostics.cluster_unit`, "document" or "row"); token
predictions without `doc_id` stop the diagnostics with an error naming the fix.

`assemble` gathers every stage's numbers, adjusted and summarised, into results.json:

    meta          title, config, versions, seeds, wall_seconds (fresh runs), stage_seconds,
                  peak_rss_mb, devices
    runs          per (arch, seed): tokens, accuracy, ECE per split; train/predict seconds
    diagnostics   tests: one row per (test, domain, arch, seed, feature) with p, Holm and BH
                  p-values (per (test, domain) family), the cluster unit, number of clusters and
                  effective number (sum n)^2 / sum n^2 and, for the `n_null_figures` smallest
                  p-values of each test, the permutation null [B]; summary: rejection counts and
                  seed bands per (test, domain, arch, feature); clusters: per domain the unit
                  and the range over cells of the cluster count and effective count; settings
    power         one row per (test, domain, arch, seed): minimum detectable gap, power curve
    probes        per domain: rows, summary (seed bands, `probes.compare.summarise_probes`),
                  bandwidth sweep, reliability curves (first seed), NW seconds; temperature:
                  T per (arch, seed) (its rows, probe "temperature", sit with the others)
    depth_attention  per domain per arch: mean depth weights (first seed) when predictions hold them
    vmoer         the VMoER section (`study.vmoer_decoder.assemble`: per_run[router][seed], table of
                  seed bands vs det, markdown, paper claims, config; {} when disabled)
    verdicts      `routecal.report.lm.verdicts(results)`
"""

from __future__ import annotations

import functools
import pathlib
import resource
from collections.abc import Callable, Mapping
from typing import Any

import jax
import numpy as np

from routecal.files import workdir as workdir_io
from routecal.probes import compare
from routecal.report.lm import verdicts, write_report  # noqa: F401 (the unit's report)
from routecal.study import temperature, token_stages, token_tests
from routecal.study.plan import TokenPlan
from routecal.study.stages import Stages, spmd, versions

CLUSTER_KEYS = ("cluster_unit", "n_clusters", "n_eff_clusters")  # per diagnostics cell


def null_path(workdir: pathlib.Path, stage: str) -> pathlib.Path:
    """Where a diagnostics stage keeps its permutation nulls."""
    return workdir / "stages" / "nulls" / (stage.replace(":", "_") + ".npz")


def stage_seconds(st: Stages) -> dict[str, float]:
    out = {}
    for p in sorted(st.dir.glob("*.json")):
        v = st.load(p.stem)
        if isinstance(v, dict) and isinstance(v.get("seconds"), int | float):
            out[p.stem] = float(v["seconds"])
    return out


def _diagnostics(plan: TokenPlan, st: Stages, w: pathlib.Path) -> dict[str, Any]:
    rows = []
    for d, a, s in plan.cells():
        for f in plan.features:
            name = f"diag:{d}:{a}:{s}:{f}"
            cell = st.load(name)
            for test, r in cell["tests"].items():
                rows.append({"test": test, "domain": d, "arch": a, "seed": s, "feature": f,
                             "n": cell["n"], "n_sequences": cell["n_sequences"],
                             **{k: cell.get(k) for k in CLUSTER_KEYS}, **r, "_stage": name})
    summary = token_tests.adjust(rows, plan.tests.alpha)
    for test in plan.tests.tests:
        mine = sorted((r for r in rows if r["test"] == test), key=lambda r: r["p_value"])
        for r in mine[: plan.n_null_figures]:
            path = null_path(w, r["_stage"])
            if path.exists():
                with np.load(path) as z:
                    if test in z.files:
                        r["null"] = z[test].tolist()
    for r in rows:
        r.pop("_stage")
    t = plan.tests
    return {"tests": rows, "summary": summary, "alpha": t.alpha, "n_permutations":
            t.n_permutations, "n_bins": t.n_bins, "n_groups": t.n_groups,
            "labels": {k: token_tests.LABELS[k] for k in t.tests}, "families": "test x domain",
            "cluster_unit": t.cluster_unit, "clusters": cluster_summary(rows)}


def cluster_summary(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per domain: the cluster unit and [min, max] over its cells of the number of clusters and
    their effective number (cells of one domain share their tokens unless thinned per run)."""
    out: dict[str, dict[str, Any]] = {}
    for d in dict.fromkeys(r["domain"] for r in rows):
        mine = [r for r in rows if r["domain"] == d and r.get("n_clusters") is not None]
        if not mine:
            continue
        out[d] = {"cluster_unit": mine[0]["cluster_unit"], "n_tokens": [
            min(r["n"] for r in mine), max(r["n"] for r in mine)]}
        for k in ("n_clusters", "n_eff_clusters"):
            out[d][k] = [min(r[k] for r in mine), max(r[k] for r in mine)]
    return out


def _power(plan: TokenPlan, st: Stages) -> list[dict[str, Any]]:
    rows = []
    for d, a, s in plan.power_cells():
        for test, p in st.load(f"power:{d}:{a}:{s}")["power"].items():
            rows.append({"test": test, "domain": d, "arch": a, "seed": s, **p})
    return rows


def _probes(plan: TokenPlan, st: Stages) -> dict[str, Any]:
    per_domain: dict[str, Any] = {}
    for m in plan.routed:
        for i, s in enumerate(plan.seeds):
            out = st.load(f"probes:{m.name}:{s}")
            for r in out["rows"]:
                dom = per_domain.setdefault(r["domain"], {"rows": [], "sweep": {},
                                                          "reliability": {}, "n_test": 0})
                dom["rows"].append({**r, "arch": m.name, "seed": s})
            for d, sw in out["sweep"].items():
                entry = per_domain[d]["sweep"].setdefault(
                    m.name, {"multiples": list(plan.sweep_multiples), "ece": {}})
                for probe, eces in sw.items():
                    entry["ece"].setdefault(probe, []).append(eces)
            for d in out["n_test"]:
                per_domain[d]["n_test"] = out["n_test"][d]
                if i == 0:
                    per_domain[d]["reliability"][m.name] = out["reliability"][d]
            per_domain.setdefault("_seconds", []).append(
                {"arch": m.name, "seed": s, "n_calib": out["n_calib"],
                 "compare_seconds": out["seconds_compare"],
                 "sweep_seconds": out["seconds_sweep"]})
    timing = per_domain.pop("_seconds", [])
    temperature = _temperature(plan, st, per_domain)
    for dom in per_domain.values():
        dom["summary"] = compare.summarise_probes(dom["rows"])
    return {"domains": per_domain, "seconds": timing, "temperature": temperature}


def _temperature(plan: TokenPlan, st: Stages, per_domain: dict[str, Any]) -> list[dict[str, Any]]:
    """Merges the `temperature:<arch>:<seed>` stages (`temperature`) into the probe rows, each
    right after its run's uncalibrated row, and the first seed's reliability curves; returns T
    per (arch, seed). Runs without the stage (a stand-in producer trains no decoder) are absent."""
    out = []
    for m in plan.routed:
        for i, s in enumerate(plan.seeds):
            name = f"temperature:{m.name}:{s}"
            if not st.done(name):
                continue
            t = st.load(name)
            for r in t["rows"]:
                rows = per_domain[r["domain"]]["rows"]
                at = next((j + 1 for j, x in enumerate(rows) if x["probe"] == "uncalibrated" and
                           (x["arch"], x["seed"]) == (m.name, s)), len(rows))
                rows.insert(at, {**r, "arch": m.name, "seed": s})
                if i == 0:  # the curve next to the uncalibrated one
                    rel = per_domain[r["domain"]]["reliability"]
                    curve, new = t["reliability"][r["domain"]], {}
                    for k, v in rel.get(m.name, {}).items():
                        new |= {k: v, "temperature": curve} if k == "uncalibrated" else {k: v}
                    rel[m.name] = new | {"temperature": curve}
            out.append({"arch": m.name, "seed": s, "temperature": t["temperature"],
                        "at_bound": t["at_bound"], "n_calib": t["n_calib"],
                        "calib_token_nll": t["calib_token_nll"], "seconds": t.get("seconds")})
    return out


def _depth(plan: TokenPlan, st: Stages) -> dict[str, Any]:
    """{domain: {arch: depth-attention means}} of the first seed (`token_stages.depth_attention`)."""
    out: dict[str, Any] = {}
    for m in plan.routed:
        for d, v in (st.load(f"run:{m.name}:{plan.seeds[0]}").get("depth_attention") or {}
                     ).items():
            out.setdefault(d, {})[m.name] = v
    return out


def assemble(plan: TokenPlan, st: Stages, w: pathlib.Path, toks: Any = None,
             wall_seconds: float | None = None) -> dict[str, Any]:
    """The results dict (without verdicts) from the finished stages; `wall_seconds`: the study's
    wall time from a fresh workdir (None when resumed). `toks` unused (all is in the stages)."""
    del toks
    runs = []
    for m, s in plan.runs:
        r = st.load(f"run:{m.name}:{s}")
        summ = st.load(f"summary:{m.name}:{s}")
        metrics = r.get("metrics") or {}
        runs.append({
            "arch": m.name, "seed": s, "routed": m.routed,
            "splits": {k: v for k, v in summ.items() if k != "seconds"},
            "test_accuracy": summ[plan.domains[0][1]]["accuracy"],  # the first (in) domain
            "test_bits_per_byte": next((v for k, v in metrics.items() if "bits_per" in k
                                        and isinstance(v, int | float)), None),
            "train_seconds": r.get("train_seconds"), "predict_seconds": r.get("predict_seconds"),
        })
    results = {
        "meta": {"title": plan.title, "study": "lm", "config": plan.config,
                 "versions": versions(), "seeds": list(plan.seeds),
                 "domains": dict(plan.domains), "calib_split": plan.calib_split,
                 "jax_backend": jax.default_backend()},
        "runs": runs,
        "diagnostics": _diagnostics(plan, st, w),
        "power": _power(plan, st),
        "probes": _probes(plan, st),
        "depth_attention": _depth(plan, st),
        "vmoer": _vmoer(plan, st, w),
    }
    results["meta"].update(
        stage_seconds=stage_seconds(st), wall_seconds=wall_seconds,
        peak_rss_mb=resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        devices=[str(dv) for dv in jax.devices()],
    )
    return results


def _vmoer(plan: TokenPlan, st: Stages, w: pathlib.Path) -> dict[str, Any]:
    """The VMoER section's results (`vmoer_decoder.assemble` of the `vmoer:<seed>` stages; {} when
    disabled); writes W/tables/vmoer.csv, one row per router."""
    if plan.vmoer_config is None:
        return {}
    from routecal import parallel
    from routecal.study import vmoer_decoder

    vcfg = plan.load_vmoer()
    names = vmoer_decoder.check_routers(vcfg.experiment)
    seeds = [int(s) for s in vcfg.experiment.seeds]
    stored = {s: st.load(f"vmoer:{s}") for s in seeds}
    per_run = {n: {s: stored[s]["runs"][n] for s in seeds} for n in names}
    out = vmoer_decoder.assemble(vcfg, per_run, w / "tables" / "vmoer.csv",
                            write=parallel.is_primary())
    out["stage_seconds"] = {s: stored[s].get("seconds") for s in seeds}
    return out


def _splits(plan: TokenPlan) -> list[str]:
    return [plan.calib_split, *[sp for _, sp in plan.domains]]


def _load_run(plan: TokenPlan, w: pathlib.Path, out: Mapping[str, Any], m: str, s: int
              ) -> dict[str, Any]:
    fps = out.get("fingerprints") or {}  # recorded when the run was predicted
    return {sp: token_stages.load_tokens(workdir_io.from_relative(out["paths"][sp], w),
                            f"{m}/seed{s}/{sp}", fps.get(sp)) for sp in _splits(plan)}


def run_stage_names(plan: TokenPlan) -> list[str]:
    """The stages every run must have finished before the analysis (a study worker waits)."""
    return [f"{k}:{m.name}:{s}" for m, s in plan.runs for k in ("run", "summary")]


def runs(plan: TokenPlan, w: pathlib.Path, step: Callable[..., Any],
         producer: token_stages.Producer | None = None) -> dict[tuple[str, int], Any]:
    """Per (model, seed): `run:` (train or import, predict: `producer`, default `train_predict`)
    and `summary:` (`run_summary`); returns {(model, seed): {split: token arrays}}."""
    produce = producer or functools.partial(
        token_stages.train_predict, predict_options=plan.predict_options,
        depth_rows=plan.depth_rows, domains=plan.domains)
    toks = {}
    for m, s in plan.runs:
        out = step(f"run:{m.name}:{s}", lambda m=m, s=s: token_stages.relative_paths(
            produce(m, s, w / "runs" / m.name / f"seed{s}"), w))
        toks[m.name, s] = _load_run(plan, w, out, m.name, s)
        step(f"summary:{m.name}:{s}", lambda m=m, s=s: token_stages.run_summary(
            toks[m.name, s], plan.tests.n_bins))
    return toks


def load_runs(plan: TokenPlan, w: pathlib.Path, st: Stages) -> dict[tuple[str, int], Any]:
    """The token arrays of every stored run (a study worker's start)."""
    return {(m.name, s): _load_run(plan, w, st.load(f"run:{m.name}:{s}"), m.name, s)
            for m, s in plan.runs}


def analysis(plan: TokenPlan, w: pathlib.Path, toks: Mapping[tuple[str, int], Any]
             ) -> list[tuple[str, Callable[[], Any]]]:
    """Every analysis stage after the runs, in the study's order: (name, thunk). Diagnostics
    cells (one per routing summary) with their power cell, probes, temperature scaling, VMoER."""
    tasks: list[tuple[str, Callable[[], Any]]] = []
    key = jax.random.key(plan.diag_seed)

    @functools.lru_cache(maxsize=2)
    def cell(d: str, a: str, s: int) -> dict[str, Any]:
        split = dict(plan.domains)[d]
        return token_stages.cell_tokens(toks[a, s][split], plan, f"{a}/seed{s}/{split}")

    for i, (d, a, s) in enumerate(plan.cells()):
        ck = jax.random.fold_in(key, i)
        for j, f in enumerate(plan.features):
            name = f"diag:{d}:{a}:{s}:{f}"
            tasks.append((name, lambda d=d, a=a, s=s, f=f, ck=ck, j=j, name=name:
                          token_stages.diagnose_cell(
                              cell(d, a, s), f, key=jax.random.fold_in(ck, j), plan=plan,
                              null_path=null_path(w, name))))
        if (d, a, s) in plan.power_cells():
            tasks.append((f"power:{d}:{a}:{s}", lambda d=d, a=a, s=s, ck=ck:
                          token_stages.power_cell(cell(d, a, s), key=jax.random.fold_in(ck, 10_000),
                                                  plan=plan)))
    for m in plan.routed:
        for s in plan.seeds:
            tasks.append((f"probes:{m.name}:{s}", lambda m=m, s=s: token_stages.probe_run(
                toks[m.name, s][plan.calib_split],
                {d: toks[m.name, s][sp] for d, sp in plan.domains}, seed=s, plan=plan)))
    for m in plan.routed:  # after every older stage: an existing workdir resumes into these
        for s in plan.seeds:
            run_dir = w / "runs" / m.name / f"seed{s}"
            if not temperature.has_trained_model(run_dir):  # a stand-in producer's run
                continue
            tasks.append((f"temperature:{m.name}:{s}", lambda m=m, s=s, run_dir=run_dir:
                          temperature.temperature_run(
                              run_dir, toks[m.name, s][plan.calib_split],
                              {d: toks[m.name, s][sp] for d, sp in plan.domains},
                              splits=dict(plan.domains), seed=s, plan=plan)))
    return tasks + _vmoer_tasks(plan)


def _vmoer_tasks(plan: TokenPlan) -> list[tuple[str, Callable[[], Any]]]:
    """The VMoER section, one stage per seed (`vmoer:<seed>`: det trained, then every router of
    `experiment.routers` from scratch or retrofitted on it, `vmoer_decoder.run_seed`); the MCQA
    data are built once, when the first of these stages runs."""
    if plan.vmoer_config is None:
        return []
    from routecal.study import vmoer_decoder

    vcfg = plan.load_vmoer()
    data = functools.cache(lambda: vmoer_decoder.build_data(
        vcfg.data, vmoer_decoder.check_scoring(str(vcfg.experiment.scoring))))
    # every process together, each router but det trained by one (`vmoer_decoder.run_seed`)
    return [(f"vmoer:{int(s)}",
             spmd(lambda s=int(s): {"runs": vmoer_decoder.run_seed(vcfg, data(), s)}))
            for s in vcfg.experiment.seeds]


def check(plan: TokenPlan) -> None:
    """Nothing beyond `TokenPlan.from_config` (an `hf` model is imported, not trained)."""
