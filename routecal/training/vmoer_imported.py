"""The imported source of the VMoER section: a Hugging Face MoE checkpoint on your disk, scored
on the published MCQA benchmarks (configs/vmoer_pretrained.py; `experiments/vmoer_pretrained.py`
is its command line). Nothing downloads.

det is the imported router; every other router is a retrofit (`<name>_retrofit`: the checkpoint
imported with that router, `models.pretrained.load_hf`, only its routing posterior trained on the
MCQA train split by `models.pretrained.retrofit`, `train.steps` steps with its own schedule,
resumable: posterior checkpoints in `workdir/<router>/seed<s>/`, one folder per ensemble member
`member<m>/` and beta `beta<b>/`, SWAG's moments in `swag_moments.npz`). The recipes (beta on
the calib split when `data.calib` is given, members fitted alone until their loss plateaus
(`train.member_steps` .. `train.member_max_steps`, `routers.baselines.Plateau`), SWAG) are
`training.router_fit`'s. Options are scored by the next-token logits
of " A", " B", ... after each prompt, right-padded and read at its own last token
(`data.mcqa_formats.encode_right_padded`); gating entropy, router-logit variance and stability
weigh the prompt tokens only. FLOP overheads at the checkpoint's MoE layer shape.
"""

from __future__ import annotations

import json
import pathlib
import time
from typing import Any

import jax
import ml_collections
import numpy as np
from flax import nnx

from routecal import flops
from routecal.data import mcqa_formats
from routecal.files import workdir as workdir_io
from routecal.models import routers
from routecal.models.pretrained import decoder_config, load_hf, load_tokenizer
from routecal.models.pretrained.checkpoint import read_config
from routecal.models.pretrained.retrofit import METRICS_FILE, RetrofitConfig, retrofit
from routecal.training import mcqa, router_fit
from routecal.training.vmoer_sources import (
    MCQA_LOWER,
    MCQA_METRICS,
    check_routers,
    router_overheads,
)

DOMAINS = {"calib": "calib", "in": "test", "near": "near", "far": "far"}  # split -> data key


def make_mesh(spec: str) -> jax.sharding.Mesh | None:
    """'fsdp=8' or 'fsdp=2,expert=4' -> a Mesh over the local devices ('' = one device)."""
    if not spec:
        return None
    axes = {k: int(v) for k, v in (kv.split("=") for kv in spec.split(","))}
    if "fsdp" not in axes or int(np.prod(list(axes.values()))) != jax.device_count():
        raise ValueError(f"model.mesh: {spec!r} needs an fsdp axis and {jax.device_count()} "
                         "devices")
    return jax.sharding.Mesh(np.array(jax.devices()).reshape(tuple(axes.values())), tuple(axes))


class ImportedSource:
    """A checkpoint imported with each router (module docstring)."""

    metrics, lower_is_better = MCQA_METRICS, MCQA_LOWER
    share_fits = False  # posterior checkpoints by orbax (`retrofit`): collective saves

    def __init__(self, cfg: ml_collections.ConfigDict, workdir: pathlib.Path):
        self.cfg, self.wd, e, d = cfg, workdir, cfg.experiment, cfg.data
        self.names, self.seeds = check_routers(e), [int(s) for s in e.seeds]
        for n in self.names:
            if n != "det" and not n.endswith("_retrofit"):
                raise ValueError(f"experiment.routers: {n!r} from scratch: an imported checkpoint "
                                 f"is trained elsewhere; use {n}_retrofit")
        self.opts = dict(cfg.model.vmoer)
        tok = load_tokenizer(cfg.checkpoint)
        if tok is None:
            raise ValueError(f"checkpoint: no tokenizer.json in {cfg.checkpoint!r}")
        train = mcqa_formats.load_split(d.train, "train", None, int(d.max_questions))
        self.n_options = train.n_options
        self.splits = {"train": mcqa_formats.encode_right_padded(train, tok, int(d.max_len))}
        self.dropped = {"train": train.n_dropped}  # items with another option count than train's
        for dom, key in DOMAINS.items():
            if d[key]:
                ds = mcqa_formats.load_split(d[key], dom, self.n_options, int(d.max_questions))
                self.splits[dom] = mcqa_formats.encode_right_padded(ds, tok, int(d.max_len))
                self.dropped[dom] = ds.n_dropped
        if "in" not in self.splits:
            raise ValueError("data.test: the in-domain test split is required")
        self.letters = mcqa_formats.spaced_letter_ids(tok, self.n_options)
        hf = decoder_config(read_config(cfg.checkpoint))
        self.shape = flops.LayerShape("checkpoint", hf.d_model, hf.n_experts, hf.top_k,
                                      hf.expert_hidden, "swiglu", n_layers=len(hf.moe_layers))
        self.info: Any = None

    def _import(self, router: str, seed: int, options: dict[str, Any]) -> nnx.Module:
        mesh = make_mesh(str(self.cfg.model.mesh))
        overrides: dict[str, Any] = {"vmoer": tuple(sorted({**self.opts, **options}.items()))}
        if router != "det":
            overrides["mlp_type"] = f"vmoer_{router}"
        model, self.info = load_hf(
            self.cfg.checkpoint, dtype=str(self.cfg.model.dtype), mesh=mesh, seed=seed,
            expert_axis="expert" if mesh is not None and "expert" in mesh.shape else None,
            overrides=overrides)  # fmt: skip
        return model

    def _train(self, model: nnx.Module, cell: pathlib.Path, trainable: str, batch_seed: list[int],
               on_step: Any = None, steps: int | None = None, stop: Any = None) -> list[float]:
        """Retrofits the `trainable` selection of `model` in place (posterior checkpoints under
        `cell`, batches from numpy seed (*batch_seed, step)) -> its per-step cross-entropy."""
        t, train = self.cfg.train, self.splits["train"]
        n, bs = len(train["answers"]), int(t.batch_size)

        def batches(step: int) -> dict[str, np.ndarray]:
            idx = np.random.default_rng([*batch_seed, step]).choice(n, bs)
            return {"ids": train["ids"][idx], "position": train["position"][idx],
                    "choice_ids": np.tile(self.letters, (len(idx), 1)),
                    "label": train["answers"][idx]}  # fmt: skip

        cfg = RetrofitConfig(steps=int(t.steps if steps is None else steps), lr=float(t.lr),
                             checkpoint_every=int(t.checkpoint_every))
        retrofit(model, batches, cell, cfg, trainable=trainable, on_step=on_step, stop=stop)
        rows, _ = workdir_io.read_jsonl(cell / METRICS_FILE, "retrofit metrics")
        return [float(r["ce"]) for r in rows]

    def fit(self, name: str, seed: int, det) -> tuple[nnx.Module, dict[str, Any]]:
        t0, base = time.perf_counter(), routers.split_method(name)[0]
        cell = self.wd / name / f"seed{seed}"
        if base == "det":
            model, log = self._import("det", seed, {}), {}
        else:
            def fit(model, trainable, stream, *, on_step=None, steps=None, stop=None,
                    **_) -> list[float]:
                sub = cell / (f"member{stream}" if isinstance(stream, int) else stream or "")
                bseed = [seed, 100 + stream] if isinstance(stream, int) else [seed]
                return self._train(model, sub, trainable, bseed, on_step, steps, stop)

            steps, e = int(self.cfg.train.steps), self.cfg.experiment
            calib = self.splits.get("calib")
            nll = None if calib is None else lambda m: mcqa.calib_nll(
                m, calib, self.letters, int(e.eval_batch_size))  # fmt: skip
            model, log = router_fit.retrofit(
                base, seed, lambda r, o: self._import(r, seed, o), fit, swag_steps=steps,
                beta_grid=tuple(e.beta_grid) if calib is not None else (), calib_nll=nll,
                moments=cell / "swag_moments.npz",
                **router_fit.ensemble_options(self.opts, self.cfg.train, steps))  # fmt: skip
        log["param_gib_per_device"] = self.info.param_bytes_per_device / 2**30
        log["train_time_s"] = time.perf_counter() - t0
        return model, log

    def evaluate(self, model: nnx.Module, seed: int) -> dict[str, Any]:
        return mcqa.evaluate(model, self.splits, self.letters, self.cfg.experiment, seed=seed)

    def overheads(self) -> dict[str, dict[str, float]]:
        return router_overheads(self.shape, self.names)

    def extras(self) -> dict[str, Any]:
        return {"n_options": self.n_options, "n_dropped_items": self.dropped,
                "scoring": "letter", "seeds": self.seeds,  # the letters' logits (docstring)
                "n_eval_items": len(self.splits["in"]["answers"]),  # in-domain
                "config": json.loads(self.cfg.to_json_best_effort())}
