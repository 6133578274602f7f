"""The study: configs x seeds -> train -> predict -> diagnose -> probe -> VMoER -> results -> report.

    routecal study --config configs/study.py --workdir W          # the main job
    routecal study --config configs/study.py:quick --workdir W    # smoke run, under 2 minutes
    routecal diagnose --predictions preds.npz                    # bring your own traces

From Python: `routecal.pipeline.study.run(config, workdir)`.

Every stage writes `W/stages/<stage>.json` when it finishes and is skipped when that file exists, so
a killed study resumes where it stopped (training itself resumes from its orbax checkpoint). The
study is keyed by its config: `W/study_config.json` records it, and a different config in the same
workdir is an error, so one workdir never mixes numbers from two configs. `W/results.json` holds
every number with the config and package versions that made it.

Predictions files follow the one schema in `routecal.predictions`.
"""

from __future__ import annotations

import dataclasses
import importlib.metadata
import json
import pathlib
import platform
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import ml_collections
import numpy as np

from routecal import report
from routecal.predictions import (
    concat_predictions,
    confidence_correct,
    load_predictions,
    routing_features,
)
from routecal.probes.compare import probe_comparison, summarise_probes

# ----------------------------------------------------------------------------------------------
# The diagnostic grid and the probe comparison (pure given arrays).
# ----------------------------------------------------------------------------------------------


@dataclasses.dataclass
class Cell:
    arch: str
    seed: int
    feature: str
    confidence: np.ndarray
    correct: np.ndarray
    routing: np.ndarray

    @property
    def key(self) -> str:
        return f"{self.arch}|{self.seed}|{self.feature}"


def diagnostic_grid(
    cells: Sequence[Cell], *, seed: int, n_permutations: int, n_bins: int, n_groups: int,
    alpha: float, n_null_figures: int = 8,
) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Within-bin permutation tests for every cell, with Holm and BH adjustment across cells.

    Returns:
      (diagnostics dict for results.json, nulls {cell key: [B]}).
    """
    from routecal.stats import diagnostics

    if not cells:
        return {"tests": [], "rejections": [], "alpha": alpha, "n_permutations": n_permutations}, {}
    grid = {c.key: (c.confidence, c.correct, c.routing) for c in cells}
    key = jax.random.key(seed)
    rows = diagnostics.permutation_grid(
        grid, key=key, n_permutations=n_permutations, n_bins=n_bins, n_groups=n_groups
    )
    tests = [
        {
            "arch": c.arch, "seed": c.seed, "feature": c.feature, "n": int(len(c.confidence)),
            "statistic": float(r.statistic), "p_value": float(r.p_value),
            "p_holm": float(r.p_holm), "p_bh": float(r.p_bh),
        }
        for c, r in zip(cells, rows, strict=True)
    ]
    # Nulls for the figure: the grid tests cell i with fold_in(key, i), so re-running the few cells
    # shown reproduces exactly the null the grid used.
    nulls = {}
    for i in sorted(range(len(cells)), key=lambda i: tests[i]["p_value"])[:n_null_figures]:
        c = cells[i]
        res = diagnostics.within_bin_permutation_test(
            c.confidence, c.correct, c.routing, key=jax.random.fold_in(key, i),
            n_permutations=n_permutations, n_bins=n_bins, n_groups=n_groups,
        )
        nulls[c.key] = np.asarray(res.null, np.float32)
    groups: dict[tuple[str, str], list[dict]] = {}
    for t in tests:
        groups.setdefault((t["arch"], t["feature"]), []).append(t)
    rejections = [
        {
            "arch": a, "feature": f, "n_seeds": len(ts),
            "n_reject_raw": sum(t["p_value"] < alpha for t in ts),
            "n_reject_holm": sum(t["p_holm"] < alpha for t in ts),
            "n_reject_bh": sum(t["p_bh"] < alpha for t in ts),
            "mean_statistic": float(np.mean([t["statistic"] for t in ts])),
            "min_p": float(min(t["p_value"] for t in ts)),
        }
        for (a, f), ts in groups.items()
    ]
    out = {
        "tests": tests, "rejections": rejections, "alpha": alpha,
        "n_permutations": n_permutations, "n_bins": n_bins, "n_groups": n_groups,
    }
    return out, nulls


_VMOER_NAMES = {"det": "deterministic"}
_VMOER_METRICS = ("accuracy", "stability", "ece", "ood_auroc")


def vmoer_table(out: Mapping[str, Any]) -> dict[str, Any]:
    """`routecal.pipeline.vmoer.run_vmoer_experiment` output -> report rows (one per router)."""
    table = out["table"]
    methods = list(next(iter(table.values())))
    rows = []
    for m in methods:
        row: dict[str, Any] = {"router": _VMOER_NAMES.get(m, m), "rel_change": {}}
        for metric in _VMOER_METRICS:
            band = table.get(metric, {}).get(m)
            if band is None:
                continue
            row[metric] = {k: band[k] for k in ("mean", "std", "min", "max", "n")}
            if m != "det" and band.get("rel_change_pct") is not None:
                row["rel_change"][metric] = band["rel_change_pct"]
        fl = table.get("flops_overhead_pct", {}).get(m)
        if fl is not None:
            row["flops_overhead_percent"] = fl["mean"]
        rows.append(row)
    return {
        "rows": rows,
        "flops": out.get("flops", {}),
        "paper_claims": out.get("paper_claims", {}),
        "per_run": out.get("per_run", {}),
        "markdown": out.get("markdown", ""),
    }


# ----------------------------------------------------------------------------------------------
# Stage cache.
# ----------------------------------------------------------------------------------------------


class Stages:
    """`W/stages/<name>.json`: a finished stage's output; present = done, skipped on resume."""

    def __init__(self, workdir: pathlib.Path):
        self.dir = workdir / "stages"
        self.dir.mkdir(parents=True, exist_ok=True)

    def path(self, name: str) -> pathlib.Path:
        return self.dir / (name.replace("/", "_").replace(":", "_") + ".json")

    def done(self, name: str) -> bool:
        return self.path(name).exists()

    def load(self, name: str) -> Any:
        return json.loads(self.path(name).read_text())

    def save(self, name: str, value: Any) -> Any:
        tmp = self.path(name).with_suffix(".tmp")
        tmp.write_text(report.dumps(value))
        tmp.replace(self.path(name))  # atomic: a killed stage leaves no half file
        return json.loads(self.path(name).read_text())

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        if self.done(name):
            return self.load(name)
        t0 = time.perf_counter()
        value = fn()
        if isinstance(value, dict):
            value = {**value, "seconds": time.perf_counter() - t0}
        return self.save(name, value)


def versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for pkg in ("routecal", "jax", "flax", "optax", "orbax-checkpoint", "numpy", "scikit-learn"):
        try:
            out[pkg] = importlib.metadata.version(pkg)
        except importlib.metadata.PackageNotFoundError:
            if pkg == "routecal":
                import routecal

                out[pkg] = routecal.__version__
    return out


# ----------------------------------------------------------------------------------------------
# The study.
# ----------------------------------------------------------------------------------------------


def _model_config(cfg: ml_collections.ConfigDict, spec: ml_collections.ConfigDict, seed: int):
    from routecal.config import load_config

    path, _, variant = spec.config.partition(":")
    full = pathlib.Path(cfg.config_dir) / path
    overrides = [o for o in spec.get("overrides", "").split(";") if o.strip()]
    overrides += [o for o in cfg.get("model_overrides", "").split(";") if o.strip()]
    overrides.append(f"seed={seed}")
    return load_config(f"{full}:{variant}" if variant else str(full), overrides)


def _check_workdir(w: pathlib.Path, cfg: ml_collections.ConfigDict) -> None:
    w.mkdir(parents=True, exist_ok=True)
    path = w / "study_config.json"
    mine = json.loads(cfg.to_json_best_effort())
    if path.exists():
        theirs = json.loads(path.read_text())
        if theirs != mine:
            diff = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))
            raise ValueError(
                f"workdir: {w} holds a study with a different config (differs in {diff}); use a "
                "new workdir, or delete it to start over"
            )
    else:
        path.write_text(json.dumps(mine, indent=1))


def run(cfg: ml_collections.ConfigDict, workdir: str | pathlib.Path, write_report: bool = True
        ) -> dict[str, Any]:
    """Runs (or resumes) the whole study in `workdir`; returns the results dict.

    Args:
      cfg: a study config (`configs/study.py`).
      workdir: where runs, predictions, stage outputs, results.json and the report go.
      write_report: also write report.md / report.html.
    """
    from tqdm.auto import tqdm

    w = pathlib.Path(workdir)
    _check_workdir(w, cfg)
    st = Stages(w)
    seeds = [int(s) for s in cfg.seeds]
    if not seeds:
        raise ValueError("seeds: the study needs at least one seed")
    archs = [a.strip() for a in cfg.architectures.split(",") if a.strip()]
    unknown = [a for a in archs if a not in cfg.models]
    if unknown:
        raise ValueError(f"architectures: unknown {unknown}; defined in models: {list(cfg.models)}")
    plan = [(a, s) for a in archs for s in seeds]
    n_stages = 2 * len(plan) + 1 + len(plan) + int(cfg.vmoer.enabled) + 1
    bar = tqdm(total=n_stages, desc="study", unit="stage")

    def step(name: str, fn: Callable[[], Any]) -> Any:
        bar.set_postfix_str(name)
        out = st.run(name, fn)
        bar.update()
        return out

    # --- train and predict -------------------------------------------------------------------
    runs, preds = [], {}
    for arch, seed in plan:
        run_dir = w / "runs" / arch / f"seed{seed}"

        def train_fn(arch=arch, seed=seed, run_dir=run_dir):
            from routecal import train

            mcfg = _model_config(cfg, cfg.models[arch], seed)
            t0 = time.perf_counter()
            metrics = train.train_and_evaluate(mcfg, str(run_dir))
            return {"metrics": metrics, "train_seconds": time.perf_counter() - t0,
                    "residual": mcfg.model.get("residual", "standard")}

        tr = step(f"train:{arch}:{seed}", train_fn)

        def predict_fn(run_dir=run_dir):
            from routecal import predict

            paths = predict.predict_workdir(str(run_dir))
            return {"paths": {k: str(v) for k, v in paths.items()}}

        pr = step(f"predict:{arch}:{seed}", predict_fn)
        preds[arch, seed] = {k: load_predictions(p) for k, p in pr["paths"].items()}
        test = preds[arch, seed]["test"]
        conf, correct = confidence_correct(test)
        from routecal.stats import calibration

        runs.append({
            "arch": arch, "seed": seed, "workdir": str(run_dir), "residual": tr["residual"],
            "test_accuracy": float(correct.mean()),
            "test_ece": calibration.ece(conf, correct, n_bins=cfg.diagnostics.n_bins),
            "test_nll": calibration.nll(test["probs"], test["labels"]),
            "train_seconds": tr["train_seconds"],
        })

    routed = [a for a in archs if cfg.models[a].get("routed", True)]

    # --- diagnostics ---------------------------------------------------------------------------
    def diag_fn():
        feats = [f.strip() for f in cfg.diagnostics.features.split(",") if f.strip()]
        cells = []
        for arch in routed:
            for seed in seeds:
                parts = [preds[arch, seed][s] for s in cfg.diagnostics.splits.split(",")]
                d = concat_predictions(parts)
                conf, correct = confidence_correct(d)
                rf = routing_features(d)
                for f in feats:
                    if f not in rf:
                        raise ValueError(
                            f"diagnostics.features: {f!r} not available for {arch} "
                            f"(available: {sorted(rf)})"
                        )
                    cells.append(Cell(arch, seed, f, conf, correct, rf[f]))
        out, nulls = diagnostic_grid(
            cells, seed=cfg.diagnostics.seed, n_permutations=cfg.diagnostics.n_permutations,
            n_bins=cfg.diagnostics.n_bins, n_groups=cfg.diagnostics.n_groups,
            alpha=cfg.diagnostics.alpha,
        )
        np.savez_compressed(w / "stages" / "nulls.npz", **nulls)
        return out

    diag = step("diagnostics", diag_fn)

    # --- probes --------------------------------------------------------------------------------
    probe_rows, sweeps, reliability = [], {}, {}
    for arch, seed in plan:
        if arch not in routed:
            bar.update()
            continue

        def probe_fn(arch=arch, seed=seed):
            return probe_comparison(
                preds[arch, seed]["calib"], preds[arch, seed]["test"], seed=seed,
                bandwidth_rules=[r.strip() for r in cfg.probes.bandwidth_rules.split(",")],
                sweep_multiples=list(cfg.probes.sweep_multiples), n_bins=cfg.diagnostics.n_bins,
            )

        out = step(f"probes:{arch}:{seed}", probe_fn)
        probe_rows += [{**r, "arch": arch, "seed": seed} for r in out["rows"]]
        sw = sweeps.setdefault(arch, {"multiples": list(cfg.probes.sweep_multiples), "ece": {}})
        for name, eces in out["sweep"].items():
            sw["ece"].setdefault(name, []).append(eces)
        if not reliability:
            reliability = out["reliability"]

    # --- VMoER ---------------------------------------------------------------------------------
    vmoer: dict[str, Any] = {}
    if cfg.vmoer.enabled:

        def vmoer_fn():
            from routecal.config import load_config
            from routecal.pipeline import vmoer as vmoer_eval

            vcfg = load_config(
                str(pathlib.Path(cfg.config_dir) / cfg.vmoer.config),
                [f"experiment.seeds={tuple(seeds)}"]
                + [o for o in cfg.vmoer.overrides.split(";") if o.strip()],
            )
            return vmoer_table(vmoer_eval.run_vmoer_experiment(vcfg, str(w / "vmoer")))

        vmoer = step("vmoer", vmoer_fn)

    # --- results and report --------------------------------------------------------------------
    depth = {}
    for arch in routed:
        t = preds[arch, seeds[0]]["test"]
        if "alpha_mean" in t and t["alpha_mean"].size:
            depth[arch] = {k: t[k] for k in ("alpha_mean", "n_sources", "sublayer_names") if k in t}
    results = {
        "meta": {
            "title": cfg.get("title", "routecal study"),
            "config": json.loads(cfg.to_json_best_effort()),
            "versions": versions(),
            "seeds": seeds,
            "devices": [str(d) for d in jax.devices()],
        },
        "runs": runs,
        "diagnostics": diag,
        "probes": {
            "rows": probe_rows, "summary": summarise_probes(probe_rows),
            "bandwidth_sweep": sweeps, "reliability": reliability,
        },
        "depth_attention": depth,
        "vmoer": vmoer,
    }
    results["verdicts"] = report.verdicts(report.to_json(results))
    (w / "results.json").write_text(report.dumps(results))
    if write_report:
        report.write_report(w)
    bar.update()
    bar.close()
    return json.loads((w / "results.json").read_text())


def split_predictions(
    preds: Mapping[str, np.ndarray], *, seed: int, fraction: float = 0.5
) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
    """Splits a predictions dict into (first, second) parts of the examples, at random (seeded).

    Arrays with N rows are split; everything else is copied to both parts.
    """
    n = len(preds["labels"])
    idx = np.random.default_rng(seed).permutation(n)
    cut = int(round(fraction * n))
    parts = []
    for sel in (np.sort(idx[:cut]), np.sort(idx[cut:])):
        parts.append({
            k: (np.asarray(v)[sel] if np.ndim(v) >= 1 and np.shape(v)[0] == n else v)
            for k, v in preds.items()
        })
    return parts[0], parts[1]


def diagnose_predictions(
    path: str | pathlib.Path, test_path: str | pathlib.Path | None = None,
    out_dir: str | pathlib.Path | None = None, n_permutations: int = 2000, seed: int = 0,
    n_bins: int = 15, n_groups: int = 3, alpha: float = 0.05,
) -> dict[str, Any]:
    """Bring your own traces: the diagnostic grid and the probe comparison on any model's npz.

    Args:
      path: predictions npz (keys in the module docstring); the diagnostics run on all of it.
      test_path: optional held-out predictions npz: the probes are fitted on `path` and scored on
        it. Without it, `path` is split in two halves at random (seeded): probes are fitted on one
        and scored on the other.
      out_dir: where results.json and the report go (default: `<path stem>_routecal/` beside it).
    Returns:
      the results dict (also written to `out_dir/results.json`, with report.md / report.html).
    """
    p = pathlib.Path(path)
    out = pathlib.Path(out_dir) if out_dir else p.with_name(p.stem + "_routecal")
    out.mkdir(parents=True, exist_ok=True)
    (out / "stages").mkdir(exist_ok=True)
    preds = load_predictions(p)
    conf, correct = confidence_correct(preds)
    rf = routing_features(preds)
    if not rf:
        raise ValueError(
            f"predictions: {p.name} has no routing summaries (H, H_norm, depth_var, depth_mean or "
            "routing_<name> arrays)"
        )
    cells = [Cell("model", 0, f, conf, correct, v) for f, v in rf.items()]
    diag, nulls = diagnostic_grid(
        cells, seed=seed, n_permutations=n_permutations, n_bins=n_bins, n_groups=n_groups,
        alpha=alpha,
    )
    np.savez_compressed(out / "stages" / "nulls.npz", **nulls)
    if test_path is not None:
        fit, test = preds, load_predictions(test_path)
    else:
        fit, test = split_predictions(preds, seed=seed)
    probes_out: dict[str, Any] = {}
    if len(fit["labels"]) >= 2 * n_bins and len(test["labels"]) >= 2 * n_bins:
        pc = probe_comparison(
            fit, test, seed=seed, bandwidth_rules=("scott", "cv_nll", "oracle_ece"),
            sweep_multiples=(0.25, 0.5, 1.0, 2.0, 4.0), n_bins=n_bins,
        )
        rows = [{**r, "arch": "model", "seed": 0} for r in pc["rows"]]
        probes_out = {
            "rows": rows, "summary": summarise_probes(rows), "reliability": pc["reliability"],
            "bandwidth_sweep": {"model": {"multiples": [0.25, 0.5, 1.0, 2.0, 4.0],
                                          "ece": {k: [v] for k, v in pc["sweep"].items()}}},
        }
    results = {
        "meta": {"title": f"routecal diagnose: {p.name}", "versions": versions(),
                 "source": str(p), "n_examples": int(len(conf))},
        "diagnostics": diag,
        "probes": probes_out,
    }
    results["verdicts"] = report.verdicts(report.to_json(results))
    (out / "results.json").write_text(report.dumps(results))
    report.write_report(out)
    return json.loads((out / "results.json").read_text())
