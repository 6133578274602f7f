"""Run a trained model over a split: probabilities, labels and routing traces, saved as .npz.

    routecal predict --workdir W      # -> W/predictions/{calib,test}.npz
                                      #    (LM runs: W/predictions/tokens/<split>/, token_predict.py)

Each npz holds:
  probs [N, C] float32, labels [N] int32,
  H, H_norm, depth_mean, depth_var [N, S] float32 (per-example routing summaries averaged over
    tokens, one column per depth-attention site: L sublayers then the readout; see `traces.py`),
  alpha_mean [S, S_max] (token- and example-averaged depth weights, zero-padded past n_sources),
  n_sources [S] int32, sublayer_names [S] str,
  mlp/<i>/<key> per-example MLP traces (MoE models), if any,
  router_entropy, router_entropy_norm, top1_margin, gate_mass, dropped [N, n_moe] MoE routing
    summaries (MoE models only; `traces.moe_summaries`).
For a standard-residual model S = 0. `decoder_depth_attention`: a trained decoder's mean depth weights
per text domain (the LM study's heatmaps).

Letters: N examples, T tokens, P token features, C classes, S depth sources.
"""

from __future__ import annotations

import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from flax import nnx

from routecal import _checks, parallel
from routecal.data import Split, shift
from routecal.files import workdir as workdir_io
from routecal.models import vmoer
from routecal.models.transformer import Transformer
from routecal.stats import calibration, uncertainty
from routecal.training import traces


@nnx.jit
def _forward(model: Transformer, tokens_BxTxP):
    out = model(tokens_BxTxP, return_traces=True)
    return jax.nn.softmax(out.logits, axis=-1), out.traces


def predict_arrays(model: Transformer, tokens: Any, *, batch_size: int = 256) -> dict[str, Any]:
    """Probabilities and raw traces of `model` on `tokens` [N, T, P].

    Batches have a fixed size (the last one zero-padded), so the forward pass compiles once.

    Returns:
      {"probs": [N, C] float32, "alpha": list of [N, T, S_l] float32 (one per depth-attention
       site; [] for standard residual), "mlp": list of per-MLP dicts of [N, ...] arrays}.
    """
    x = _checks.as_array(tokens, "tokens", ndim=3, dtype=np.float32)
    batch_size = _checks.check_positive_int(batch_size, "batch_size")
    mc = model.cfg
    if x.shape[1:] != (mc.seq_len, mc.token_dim):
        raise ValueError(
            f"tokens: expected shape [N, {mc.seq_len}, {mc.token_dim}], got {list(x.shape)}"
        )
    n = x.shape[0]
    bs = batch_size
    n_pad = -(-n // bs) * bs
    xp = np.zeros((n_pad, *x.shape[1:]), np.float32)
    xp[:n] = x
    chunks = [jax.device_get(_forward(model, xp[i : i + bs])) for i in range(0, n_pad, bs)]
    cat = lambda *xs: np.concatenate([np.asarray(a) for a in xs], axis=0)[:n]
    probs = cat(*[c[0] for c in chunks]).astype(np.float32)
    tr = (
        jax.tree.map(cat, *[c[1] for c in chunks])
        if len(chunks) > 1
        else jax.tree.map(lambda a: np.asarray(a)[:n], chunks[0][1])
    )
    return {"probs": probs, "alpha": list(tr["alpha"]), "mlp": list(tr["mlp"])}


def predictions_record(
    model: Transformer, split: Split, *, batch_size: int = 256, token: str | int = "mean"
) -> dict[str, np.ndarray]:
    """The arrays `predict_workdir` saves for one split (see the module docstring)."""
    out = predict_arrays(model, split.tokens, batch_size=batch_size)
    summ = traces.summarize(out["alpha"], token=token)
    n = len(split)
    rec: dict[str, np.ndarray] = {
        "probs": out["probs"],
        "labels": np.asarray(split.labels, np.int32),
    }
    for k, v in summ.items():
        rec[k] = v if v.size else np.zeros((n, 0), np.float32)
    rec["alpha_mean"], rec["n_sources"] = traces.alpha_mean(out["alpha"])
    names = model.cfg.sublayer_names
    rec["sublayer_names"] = np.array(names, dtype=str) if names else np.zeros((0,), dtype="<U1")
    for i, tr in enumerate(out["mlp"]):
        for k, v in tr.items():
            rec[f"mlp/{i}/{k}"] = np.asarray(v)
    # MoE routing summaries [N, n_moe] (router_entropy, top1_margin, gate_mass, ...); see traces.py
    rec.update(traces.moe_summaries(out["mlp"], token=token))
    return rec


def predict_workdir(
    workdir: str | pathlib.Path,
    splits: tuple[str, ...] = ("calib", "test"),
    extra_splits: dict[str, Split] | None = None,
    *,
    batch_size: int = 256,
    lm_options: dict | None = None,
) -> dict[str, pathlib.Path]:
    """Writes W/predictions/<split>.npz for the trained model in `workdir`.

    Multi-host: every process predicts (the model's collectives span them), process 0 writes, and
    every process returns once the files exist (`parallel.barrier`).

    For an LM run (`cfg.task == "lm"`) it writes token-level shards instead,
    W/predictions/tokens/<split>/ for calib, test, near and far (`token_predict.predict_lm`, with
    `lm_options` such as every, min_position, max_tokens, batch_size).

    Args:
      workdir: a finished (or checkpointed) training run.
      splits: dataset splits to predict ("train", "calib", "test").
      extra_splits: more named splits (e.g. shifted / OOD sets) with the same token shape.
      batch_size: fixed prediction batch size.
      lm_options: keyword arguments of `token_predict.predict_lm` (LM runs only).

    Returns:
      split name -> path of its npz (or, for LMs, of its shard directory).
    """
    from routecal.training.train import load_trained

    model, cfg, dataset = load_trained(workdir)
    if cfg.get("task", "classify") == "lm":
        if extra_splits:
            raise ValueError("extra_splits: not supported for LM runs (use token_predict)")
        from routecal.training import checkpoints, token_predict

        mngr = checkpoints.manager(pathlib.Path(workdir))
        step = mngr.latest_step()
        mngr.close()
        paths = token_predict.predict_lm(model, dataset, workdir, **(lm_options or {}),
                                         fingerprint=token_predict.run_fingerprint(cfg, step))
        parallel.barrier("predict_workdir:lm")  # multi-host: process 0's shards are written
        return paths
    out_dir = pathlib.Path(workdir) / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    todo = {name: dataset.split(name) for name in splits}
    for name, split in (extra_splits or {}).items():
        if name in todo:
            raise ValueError(f"extra_splits: name {name!r} clashes with a dataset split")
        _checks.check_labels(split.labels, dataset.num_classes, f"extra_splits[{name!r}].labels")
        todo[name] = split
    paths = {}
    for name, split in todo.items():
        rec = predictions_record(model, split, batch_size=batch_size)
        path = out_dir / f"{name}.npz"
        if parallel.is_primary():  # multi-host: process 0 writes; atomic (no half file on a kill)
            workdir_io.save_npz(path, rec)
        paths[name] = path
    parallel.barrier("predict_workdir")  # multi-host: no process reads them before they exist
    return paths


def predict_process_shard(
    workdir: str | pathlib.Path, split: str = "test", *, batch_size: int = 256
) -> pathlib.Path:
    """Multi-host predict: this process predicts its part of `split` and writes one shard.

    Process i of n takes examples `parallel.process_slice(N)` (contiguous, `numpy.array_split`
    order) and writes W/predictions/<split>-<i:05d>-of-<n:05d>.npz (keys as `predict_workdir`;
    example-averaged `alpha_mean` is per shard). `predictions.concat_predictions` of the shards in
    process order gives the one-process arrays.

    Returns:
      the path of this process's shard.
    """
    from routecal.training.train import load_trained

    model, _, dataset = load_trained(workdir)
    full = dataset.split(split)
    part = parallel.process_slice(len(full))
    sub = Split(tokens=full.tokens[part], labels=full.labels[part])
    out_dir = pathlib.Path(workdir) / "predictions"
    out_dir.mkdir(parents=True, exist_ok=True)
    i, n = parallel.process_index(), parallel.process_count()
    path = out_dir / f"{split}-{i:05d}-of-{n:05d}.npz"
    workdir_io.save_npz(path, predictions_record(model, sub, batch_size=batch_size))
    return path


def decoder_depth_attention(run_dir: pathlib.Path, domains: Sequence[tuple[str, str]], rows: int
                    ) -> dict[str, Any]:
    """Mean depth-attention weights per domain: the trained decoder on the first `rows` packed
    rows of each domain's split, alpha averaged over rows and positions (PAD included).

    Returns:
      {domain: {"alpha_mean": [L + 1, S_max] (NaN past each site's sources), "n_sources":
      [L + 1], "sublayer_names": [L + 1]}} (sites: the L sublayers, then the readout).
    """
    from routecal.training.train import load_trained  # train imports this module

    model, cfg, dataset = load_trained(run_dir)
    out = {}
    for domain, split in domains:
        ids = np.asarray(dataset.split(split).ids[:rows], np.int32)[:, :-1]
        alphas = model(ids, return_traces=True).traces["alpha"]
        if not alphas:
            return {}
        means = [np.asarray(a, np.float64).mean(axis=(0, 1)) for a in alphas]
        width = max(len(m) for m in means)
        table = np.full((len(means), width), np.nan)
        for i, m in enumerate(means):
            table[i, : len(m)] = m
        names = [f"site {i}" for i in range(len(means) - 1)] + ["readout"]
        out[domain] = {"alpha_mean": table, "n_sources": [len(m) for m in means],
                       "sublayer_names": names}
    return out

# ----------------------------------------------------------------------------------------------
# The VMoER metrics of a classifier MoE (the VMoER section's classifier source)
# ----------------------------------------------------------------------------------------------


def _moe_experts(model: nnx.Module, tokens: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """Selected experts [N, T, K] of every MoE layer; the model is cloned so every call sees the
    same routing-noise draws (RNG counters are part of the model state)."""
    out = predict_arrays(nnx.clone(model), tokens, batch_size=batch_size)
    return [np.asarray(tr["experts"]) for tr in out["mlp"] if "experts" in tr]


def _sampled_probs(model: nnx.Module, tokens: np.ndarray, n: int, batch_size: int) -> np.ndarray:
    """[S, N, C] class probabilities from S stochastic passes (routing sampled in every pass)."""
    m = nnx.clone(model)
    if vmoer.set_router_sampling(m, True) == 0:
        return np.zeros((0,))
    return np.stack(
        [predict_arrays(m, tokens, batch_size=batch_size)["probs"] for _ in range(n)]
    )


def vmoer_metrics(model: nnx.Module, dataset: Any, ecfg: Any) -> dict[str, float]:
    """The VMoER metrics of a classifier MoE on `dataset.test` (`ecfg`: the experiment section
    of configs/vmoer_digits.py):
      accuracy, ece, nll   top-label ECE over `ecfg.n_bins` equal-width bins;
      stability            mean Jaccard of the selected-expert sets of every MoE layer, clean vs
                           Gaussian-perturbed pixels (std `ecfg.stability_noise_std`), the same
                           routing draws for both (the model is cloned): input sensitivity;
      ood_auroc            OOD AUROC of predictive entropy, test split vs each OOD set of
                           `routecal.data.shift` (`ecfg.ood_kinds`), mean over the kinds; also
                           ood_auroc_maxprob and, for stochastic routers, ood_auroc_mi (mutual
                           information over `ecfg.mc_samples` sampled passes)."""
    bs = 256
    test: Split = dataset.test
    probs = predict_arrays(nnx.clone(model), test.tokens, batch_size=bs)["probs"]
    probs = probs / probs.sum(axis=1, keepdims=True)
    labels = np.asarray(test.labels)
    res: dict[str, float] = {
        "accuracy": float(np.mean(probs.argmax(1) == labels)),
        "ece": calibration.ece_from_probs(probs, labels, n_bins=int(ecfg.n_bins)),
        "nll": float(-np.mean(np.log(np.maximum(probs[np.arange(len(labels)), labels], 1e-12)))),
    }
    noisy = shift.pixel_noise(test, float(ecfg.stability_noise_std), seed=1234, clip=False)
    res["stability"] = uncertainty.routing_stability(
        _moe_experts(model, test.tokens, bs), _moe_experts(model, noisy.tokens, bs)
    ).overall
    mc_in = _sampled_probs(model, test.tokens, int(ecfg.mc_samples), bs)
    au_h, au_p, au_mi = [], [], []
    for kind in ecfg.ood_kinds:
        kw = {"std": float(ecfg.ood_noise_std), "seed": 99} if kind == "pixel_noise" else {}
        _, ood = shift.make_ood(dataset, kind, **kw)
        p_out = predict_arrays(nnx.clone(model), ood.tokens, batch_size=bs)["probs"]
        p_out = p_out / p_out.sum(axis=1, keepdims=True)
        au_h.append(
            uncertainty.ood_auroc(
                uncertainty.ood_score(probs, "entropy"), uncertainty.ood_score(p_out, "entropy")
            )
        )
        au_p.append(
            uncertainty.ood_auroc(
                uncertainty.ood_score(probs, "max_prob"), uncertainty.ood_score(p_out, "max_prob")
            )
        )
        if mc_in.size:
            mc_out = _sampled_probs(model, ood.tokens, int(ecfg.mc_samples), bs)
            norm = lambda p: p / p.sum(axis=-1, keepdims=True)
            au_mi.append(
                uncertainty.ood_auroc(
                    uncertainty.mutual_information(norm(mc_in)),
                    uncertainty.mutual_information(norm(mc_out)),
                )
            )
    res["ood_auroc"] = float(np.mean(au_h))
    res["ood_auroc_maxprob"] = float(np.mean(au_p))
    if au_mi:
        res["ood_auroc_mi"] = float(np.mean(au_mi))
    return res
