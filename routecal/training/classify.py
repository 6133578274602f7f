"""The image-classifier task of `train.py`: the transformer on a `Dataset`, softmax cross-entropy.

`ClassifierTask` is what `train.make_task` returns for `cfg.task` absent or "classify"; the model,
step and evaluation functions are importable on their own (and from `routecal.training.train`).

Letters: B batch, T tokens, P token features, C classes.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx

from routecal import _checks, parallel
from routecal.data import Dataset, Split, load_dataset
from routecal.models.transformer import ModelConfig, Transformer
from routecal.training.optim import trainable_filter


def build_model(cfg: ml_collections.ConfigDict, dataset: Dataset) -> Transformer:
    """The `Transformer` described by `cfg.model` for `dataset`, initialised from `cfg.seed`."""
    mcfg = ModelConfig.from_config(
        cfg.model,
        seq_len=dataset.seq_len,
        token_dim=dataset.token_dim,
        num_classes=dataset.num_classes,
    )
    seed = int(cfg.seed)
    return Transformer(mcfg, rngs=nnx.Rngs(params=seed, dropout=seed + 1))


def _check_dataset(dataset: Dataset) -> None:
    for split in ("train", "calib", "test"):
        s = dataset.split(split)
        _checks.as_array(s.tokens, f"{split}.tokens", ndim=3, dtype=None)
        _checks.check_labels(s.labels, dataset.num_classes, f"{split}.labels")
    if len(dataset.train) < 1:
        raise ValueError("dataset.train: is empty")


@functools.lru_cache(maxsize=8)
def _make_train_step(trainable: str):
    """The jit-compiled train step for one `train.trainable` selection (cached: compiles once per
    model structure and batch shape in a process)."""
    wrt = trainable_filter(trainable)

    @nnx.jit
    def train_step(model: Transformer, optimizer: nnx.Optimizer, tokens_BxTxP, labels_B):
        def loss_fn(m: Transformer):
            out = m(tokens_BxTxP, train=True)
            ce = optax.softmax_cross_entropy_with_integer_labels(out.logits, labels_B).mean()
            return ce + out.aux_loss, (ce, out.aux_loss)

        return gradient_step(model, optimizer, loss_fn, wrt)

    return train_step


def gradient_step(model: nnx.Module, optimizer: nnx.Optimizer, loss_fn, wrt) -> dict[str, Any]:
    """One optimizer update of the `wrt` parameters of `model` (call inside jit).

    `loss_fn(model) -> (loss, (ce, aux_loss))`; returns the step's metrics.
    """
    grad_fn = nnx.value_and_grad(loss_fn, argnums=nnx.DiffState(0, wrt), has_aux=True)
    (loss, (ce, aux_loss)), grads = grad_fn(model)
    optimizer.update(model, grads)
    return {"loss": loss, "ce": ce, "aux_loss": aux_loss, "grad_norm": optax.tree.norm(grads)}


@nnx.jit
def _eval_step(model: Transformer, tokens_BxTxP, labels_B, mask_B):
    logits = model(tokens_BxTxP).logits
    nll = optax.softmax_cross_entropy_with_integer_labels(logits, labels_B)
    correct = (jnp.argmax(logits, axis=-1) == labels_B).astype(jnp.float32)
    return jnp.sum(nll * mask_B), jnp.sum(correct * mask_B)


def evaluate(model: Transformer, split: Split, *, batch_size: int, mesh=None) -> dict[str, float]:
    """Accuracy and mean NLL of `model` on `split`, in fixed-size padded batches."""
    mesh = mesh if mesh is not None else parallel.make_mesh(1)
    n = len(split)
    n_pad = parallel.pad_to_multiple(n, batch_size)
    tokens = np.zeros((n_pad, *split.tokens.shape[1:]), np.float32)
    tokens[:n] = split.tokens
    labels = np.zeros((n_pad,), np.int32)
    labels[:n] = split.labels
    mask = np.zeros((n_pad,), np.float32)
    mask[:n] = 1.0
    nll_sum, correct_sum = 0.0, 0.0
    for i in range(0, n_pad, batch_size):
        sl = slice(i, i + batch_size)
        t, y, m = put_batch(mesh, tokens[sl], labels[sl], mask[sl])
        a, b = _eval_step(model, t, y, m)
        nll_sum, correct_sum = nll_sum + a, correct_sum + b
    return {"accuracy": float(correct_sum) / n, "nll": float(nll_sum) / n}


def put_batch(mesh, *arrays: np.ndarray) -> tuple[jax.Array, ...]:
    return tuple(jax.device_put(a, parallel.batch_sharding(mesh, a.ndim)) for a in arrays)


class ClassifierTask:
    """The transformer classifier on a `Dataset` (`cfg.task` absent or "classify").

    A task holds the data and gives the loop what differs between tasks: `build_model()`,
    `n_train`, `train_batch(idx, step)` (host arrays for the step), `train_step(trainable)`,
    `evaluate(model, split, batch_size=, mesh=, final=)`, `eval_splits` (periodic),
    `final_splits` and `artifacts()` (extra JSON files for the workdir).
    """

    kind = "classify"

    def __init__(self, cfg: ml_collections.ConfigDict, dataset: Dataset | None = None):
        self.cfg = cfg
        self.dataset = load_dataset(cfg.data) if dataset is None else dataset
        _check_dataset(self.dataset)
        self.eval_splits = self.final_splits = ("calib", "test")
        self.noise = float(cfg.train.get("input_noise", 0.0))
        self.seed = int(cfg.get("data_seed", cfg.seed))

    @property
    def n_train(self) -> int:
        return len(self.dataset.train)

    def build_model(self) -> Transformer:
        return build_model(self.cfg, self.dataset)

    def train_batch(self, idx: np.ndarray, step: int) -> tuple[np.ndarray, ...]:
        x = self.dataset.train.tokens[idx].astype(np.float32)
        if self.noise > 0:  # Gaussian input noise, seeded by (seed, step): resumable, deterministic
            x = x + self.noise * np.random.default_rng([self.seed, 1, step]).standard_normal(
                x.shape, dtype=np.float32
            )
        return x, self.dataset.train.labels[idx]

    def train_step(self, trainable: str):
        return _make_train_step(trainable)

    def evaluate(self, model, split: str, *, batch_size: int, mesh, final: bool = False):
        del final
        return evaluate(model, self.dataset.split(split), batch_size=batch_size, mesh=mesh)

    def artifacts(self) -> dict[str, Any]:
        return {}


def fit_router_steps(task: ClassifierTask, model: nnx.Module, tcfg: ml_collections.ConfigDict,
                     trainable: str, *, steps: int, seed: int, on_step: Any = None,
                     constant_lr: bool = False, stop: Any = None) -> list[float]:
    """Trains the `trainable` selection of `model` (e.g. "router/proj") in place for `steps`
    steps of the task's own train step (AdamW with `tcfg`'s lr, warm-up and clipping; cosine
    decay unless `constant_lr`); batches drawn with numpy from `seed`; `on_step(i)` after step
    i; `stop(losses)` (e.g. `baselines.Plateau.stop`) ends it early. Returns the cross-entropy
    losses; FloatingPointError on a non-finite one."""
    from routecal.training import optim

    t = ml_collections.ConfigDict(tcfg.to_dict())
    t.steps, t.end_lr_fraction = int(steps), 1.0 if constant_lr else 0.0
    optimizer = nnx.Optimizer(model, optim.make_tx(t), wrt=trainable_filter(trainable))
    step_fn, rng, losses = task.train_step(trainable), np.random.default_rng(seed), []
    for i in range(int(steps)):
        idx = rng.integers(0, task.n_train, int(t.batch_size))
        losses.append(float(step_fn(model, optimizer, *task.train_batch(idx, i))["ce"]))
        if on_step is not None:
            on_step(i)
        if stop is not None and stop(losses):
            break
    if not np.all(np.isfinite(losses)):
        raise FloatingPointError(f"retrofit: non-finite training loss {losses[-5:]}")
    return losses
