"""Evaluation and the table of the VMoER language-model experiment (`vmoer_decoder.py`); its markdown
section is drawn by `routecal.report.vmoer_lm` (re-exported here).

Per trained model, on the embedded MCQA (option probabilities by `experiment.scoring`: the answer
letter's logit restricted to A-D, or the length-normalised option log-likelihood through
`mcqa.loglik_option_probs`; calibration over options, `routecal.stats.mcqa`; for loglik every
token-level score below runs over the item's K option sequences):
  accuracy, ece, mce, nll, brier          in-domain test items
  stability_<sigma>                       mean over MoE layers of the per-layer Jaccard of top-K
                                          sets under hidden-state noise (`vmoer_stability`:
                                          the paper's one-layer-input protocol by default),
                                          the first `experiment.stability_items` in-domain
                                          items; `stability_layers_<sigma>` the per-layer curve
  ood_auroc_<domain>_<score>              in-domain vs near / far, for every score the config
                                          names (`experiment.ood_scores`, `OOD_SCORES`):
                                          entropy, max_prob (1 - max prob), mi (S sampled
                                          passes; 0 for a deterministic model), gating_entropy
                                          and router_logit_variance (token means over layers of
                                          the `router_logit_var` trace; 0 for routers whose
                                          logits are deterministic); ood_auroc_<domain> = entropy
With loglik scoring an item's K option sequences share one routing draw (common random numbers,
`vmoer.set_common_noise`), so options are compared under the same routing.
  flops_*_pct                             XLA-counted router overhead at the realistic layer
The table: per metric and router the seed band (mean, std, min, max, n; `stats.seeds.seed_band`),
the relative change of the mean against `det` and the seed-band verdict against `det`
(`stats.seeds.compare_bands`: better / worse only when the [min, max] bands do not overlap),
beside the paper's claims.
"""

from __future__ import annotations

import csv
import io
import pathlib
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from routecal import flops
from routecal.files import workdir as workdir_io
from routecal.models import routers, vmoer
from routecal.report.vmoer_lm import (  # noqa: F401  (the section's text lives in report/)
    CLAIM_OF,
    PAPER_CLAIMS,
    accuracy_interval,
    band_cell,
    report,
)
from routecal.stats import mcqa, seeds, uncertainty
from routecal.study import vmoer_stability
from routecal.study.vmoer_decoder_data import noise_group, option_outputs

TABLE_METRICS = (
    "stability",
    "ece",
    "ood_auroc_near",
    "ood_auroc_far",
    "flops_infer_pct",
    "accuracy",
    "mce",
    "nll",
    "brier",
    "ood_auroc_near_router_logit_variance",
    "ood_auroc_far_router_logit_variance",
    "ood_auroc_near_gating_entropy",
    "ood_auroc_far_gating_entropy",
    "ood_auroc_near_mi",
    "ood_auroc_far_mi",
    "flops_train_pct",
)
LOWER_IS_BETTER = {"ece", "mce", "nll", "brier", "flops_infer_pct", "flops_train_pct"}


# Per-token traces the MoE layers emit (`moe.MoEMLP` and every router's RouterOutput.trace).
KNOWN_TRACES = ("router_probs", "experts", "gates", "dropped", "router_sigma",
                "router_logit_var", "temperature")  # fmt: skip
EVAL_TRACES = ("experts", "router_probs", "router_logit_var")
OOD_SCORES = ("entropy", "max_prob", "mi", "gating_entropy", "router_logit_variance")


def keep_traces(traces: list[dict[str, Any]], keys: tuple[str, ...]) -> list[dict[str, Any]]:
    """The `keys` of every MoE layer's trace (a key a router does not emit is left out);
    ValueError for a key no MoE layer or router emits (a misspelt key never silently drops a
    score)."""
    unknown = sorted(set(keys) - set(KNOWN_TRACES))
    if unknown:
        raise ValueError(f"trace keys: unknown {unknown}; MoE layers emit {KNOWN_TRACES}")
    return [{k: t[k] for k in keys if k in t} for t in traces]


@nnx.jit
def _forward(model, batch):
    outs, out = option_outputs(model, batch, return_traces=True)
    return outs, keep_traces(out.traces["mlp"], EVAL_TRACES)


def _inputs(items: np.ndarray | dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The model inputs of an MCQA split: {"ids"} (+ "mask" for loglik); a bare [N, T] array is
    read as letter prompts."""
    if not isinstance(items, dict):
        return {"ids": np.asarray(items)}
    return {k: v for k, v in items.items() if k in ("ids", "mask")}


def predict(model: nnx.Module, items: Any, batch_size: int) -> dict[str, Any]:
    """Per-item option outputs (`vmoer_decoder_data.option_outputs`: last-position logits [N, V], or
    option log-likelihood sums and lengths [N, K]) and per-MoE-layer traces (lists of
    [N, T, ...]; [N, K * T, ...] for loglik) in fixed-size batches (the last one padded by
    repetition, so one compile serves every batch)."""
    batch_all = _inputs(items)
    n = len(batch_all["ids"])
    outs, traces = [], []
    for i in range(0, n, batch_size):
        chunk = {k: v[i : i + batch_size] for k, v in batch_all.items()}
        m = len(chunk["ids"])
        if m < batch_size:
            chunk = {
                k: np.concatenate([v, np.repeat(v[-1:], batch_size - m, 0)])
                for k, v in chunk.items()
            }
        o, tr = _forward(model, {k: jnp.asarray(v) for k, v in chunk.items()})
        outs.append({k: np.asarray(v)[:m] for k, v in o.items()})
        traces.append([{k: np.asarray(v)[:m] for k, v in t.items()} for t in tr])
    layers = [
        {k: np.concatenate([b[j][k] for b in traces]) for k in traces[0][j]}
        for j in range(len(traces[0]))
    ]
    return {"outs": {k: np.concatenate([o[k] for o in outs]) for k in outs[0]}, "layers": layers}


def option_probs(pred: dict[str, Any], letters: np.ndarray) -> np.ndarray:
    """Option probabilities [N, K] under the scoring the outputs came from."""
    o = pred["outs"]
    if "last_logits" in o:
        return mcqa.letter_option_probs(o["last_logits"], letters)
    return mcqa.loglik_option_probs(o["sums"], o["lengths"])


def _sampled_probs(model, items, letters, n: int, bs: int) -> np.ndarray | None:
    m = nnx.clone(model)
    if vmoer.set_router_sampling(m, True) == 0:
        return None
    return np.stack([option_probs(predict(m, items, bs), letters) for _ in range(n)])


def ood_scores(
    names: Any,
    probs_NxK: np.ndarray,
    layers: list[dict[str, np.ndarray]],
    mc_SxNxK: np.ndarray | None,
    mask_NxT: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Every OOD score in `names` (`OOD_SCORES`) per item -> {name: [N]}; ValueError for an
    unknown name. mi is 0 without sampled passes (a deterministic model); router_logit_variance
    is 0 where no layer emits `router_logit_var` (deterministic logits: det, vtsr, fixed_temp)."""
    names = tuple(names)
    unknown = sorted(set(names) - set(OOD_SCORES))
    if unknown:
        raise ValueError(f"experiment.ood_scores: unknown {unknown}; expected {OOD_SCORES}")
    n = len(probs_NxK)
    out: dict[str, np.ndarray] = {}
    for name in names:
        if name in ("entropy", "max_prob"):
            out[name] = uncertainty.ood_score(probs_NxK, name)
        elif name == "mi":
            out[name] = np.zeros(n) if mc_SxNxK is None else uncertainty.mutual_information(mc_SxNxK)
        elif name == "gating_entropy":
            out[name] = uncertainty.gating_entropy([t["router_probs"] for t in layers], mask_NxT)
        elif not any("router_logit_var" in t for t in layers):
            out[name] = np.zeros(n)
        else:
            out[name] = uncertainty.router_logit_variance(
                [t["router_logit_var"] for t in layers], mask_NxT
            )
    return out


def ood_aurocs(scores: dict[str, dict[str, np.ndarray]]) -> dict[str, float]:
    """ood_auroc_<domain>_<score> for every OOD domain present, and ood_auroc_<domain> (entropy)."""
    res: dict[str, float] = {}
    for dom in ("near", "far"):
        if dom in scores:
            for k, v in scores[dom].items():
                res[f"ood_auroc_{dom}_{k}"] = uncertainty.ood_auroc(scores["in"][k], v)
            if f"ood_auroc_{dom}_entropy" in res:
                res[f"ood_auroc_{dom}"] = res[f"ood_auroc_{dom}_entropy"]
    return res


def evaluate(model: nnx.Module, data: dict[str, Any], e: ml_collections.ConfigDict, *, seed: int):
    """Every per-run metric of the module docstring for one trained model."""
    bs, letters = int(e.eval_batch_size), data["letters"]
    vmoer.set_common_noise(model, noise_group(data))
    res: dict[str, Any] = {}
    scores = {}
    names = tuple(e.get("ood_scores", OOD_SCORES))
    for dom in ("in", "near", "far"):
        items = _inputs(data["mcqa"][dom])
        ans = data["mcqa"][dom]["answers"]
        pred = predict(nnx.clone(model), items, bs)
        probs = option_probs(pred, letters)
        mc = _sampled_probs(model, items, letters, int(e.mc_samples), bs)
        scores[dom] = ood_scores(names, probs, pred["layers"], mc)
        if dom == "in":
            res.update(mcqa.mcqa_metrics(probs, ans, n_bins=int(e.n_bins)))
        else:
            res[f"accuracy_{dom}"] = float(np.mean(probs.argmax(1) == ans))
    res.update(ood_aurocs(scores))
    n_stab = int(e.get("stability_items", 0)) or None  # the first items (0: all)
    in_items = {k: v[:n_stab] for k, v in _inputs(data["mcqa"]["in"]).items()}

    def experts_fn(m: nnx.Module) -> list[np.ndarray]:
        return [t["experts"] for t in predict(m, in_items, bs)["layers"]]

    res.update(vmoer_stability.stability(
        model, experts_fn, e.sigmas, seed=seed,
        protocol=str(e.get("stability_protocol", "layer_input")),
    ))  # fmt: skip
    res["stability"] = res[f"stability_{float(e.stability_sigma):g}"]
    return res


def calib_nll(model: nnx.Module, data: dict[str, Any], e: ml_collections.ConfigDict) -> float:
    """NLL of the option distribution on the calibration split (selects beta; never test)."""
    vmoer.set_common_noise(model, noise_group(data))
    split = data["mcqa"]["calib"]
    probs = option_probs(predict(nnx.clone(model), _inputs(split), int(e.eval_batch_size)),
                         data["letters"])  # fmt: skip
    return float(mcqa.mcqa_metrics(probs, split["answers"])["nll"])


def one_line(res: dict[str, Any]) -> str:
    keys = ("accuracy", "ece", "stability", "ood_auroc_near", "ood_auroc_far")
    return " ".join(f"{k}={res[k]:.4f}" for k in keys if k in res)


def flop_overheads(cfg: ml_collections.ConfigDict, names: list[str]) -> dict[str, dict[str, float]]:
    """Per router name (retrofits share their router's): flops_train_pct, flops_infer_pct at the
    realistic layer (`flops.REALISTIC_LAYER`, S = experiment's vmoer samples)."""
    bases = sorted({routers.canonical(n.removesuffix("_retrofit")) for n in names})
    over = flops.router_overheads(flops.REALISTIC_LAYER, tuple(bases))
    return {
        n: {f"flops_{m}_pct": over[routers.canonical(n.removesuffix("_retrofit"))][f"{m}_pct"]
            for m in ("train", "infer")}
        for n in names
    }  # fmt: skip


def summarize(per_run: dict[str, dict[int, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    """per_run[router][seed][metric] -> table[router][metric] = seed band (+ rel_change_pct)."""
    table: dict[str, dict[str, Any]] = {}
    for name, runs in per_run.items():
        row = {}
        for metric in TABLE_METRICS:
            vals = [r[metric] for r in runs.values() if r.get(metric) is not None]
            if vals:
                row[metric] = seeds.seed_band(vals)
        table[name] = row
    base = table.get("det", {})
    for name, row in table.items():
        for metric, band in row.items():
            b = base.get(metric, {}).get("mean")
            if name != "det" and b not in (None, 0.0) and np.isfinite(b):
                band["rel_change_pct"] = 100.0 * (band["mean"] / b - 1.0)
                band["verdict"] = seeds.compare_bands(
                    band, base[metric], higher_is_better=metric not in LOWER_IS_BETTER
                )
    return table


def write_csv(table: dict[str, dict[str, Any]], names: list[str], path: pathlib.Path) -> None:
    """One row per router: <metric>_mean, _std, _min, _max, _rel_pct, n_seeds, paper claims."""
    header = ["router", "n_seeds"]
    for m in TABLE_METRICS:
        header += [f"{m}_{k}" for k in ("mean", "std", "min", "max", "rel_pct", "verdict")]
    header += [f"paper_{k}" for k in PAPER_CLAIMS]
    f = io.StringIO(newline="")
    w = csv.writer(f)
    w.writerow(header)
    for name in names:
        row = table[name]
        cells: list[Any] = [name, max((b["n"] for b in row.values()), default=0)]
        for m in TABLE_METRICS:
            b = row.get(m, {})
            keys = ("mean", "std", "min", "max", "rel_change_pct", "verdict")
            cells += [b.get(k, "") for k in keys]
        cells += list(PAPER_CLAIMS.values())
        w.writerow(cells)
    workdir_io.write_text(path, f.getvalue())  # whole, atomically


def to_markdown(table: dict[str, dict[str, Any]], names: list[str]) -> str:
    """The paper's table: mean ± std [min, max] (relative change vs det) per router."""
    cols = list(CLAIM_OF) + ["accuracy"]
    lines = ["| router | " + " | ".join(cols) + " |", "|" + "---|" * (len(cols) + 1)]
    for name in names:
        cells = [band_cell(table[name].get(m), verdict=True) for m in cols]
        lines.append(f"| {name} | " + " | ".join(cells) + " |")
    lines.append("")
    lines.append(seeds.RULE + ".")
    claims = ", ".join(f"{CLAIM_OF.get(k, k)} {v}" for k, v in PAPER_CLAIMS.items())
    return (
        "\n".join(lines) + f"\n\nPaper's claims (relative to the deterministic router): {claims}."
    )
