"""What every digits config shares: typed variant parsing and the data / model / train blocks.

`parse_arg` follows big_vision's `configs/common.py`: a config's `get_config(arg)` declares its
variants with typed defaults and gets them back parsed::

    v = parse_arg("block,quick", residual=("full", "block", "standard"), quick=False)
    v.residual == "block" and v.quick is True

A tuple declares a choice (first entry = default) that a bare token selects; a bool is a flag that
a bare token sets; any key can be given as `key=value` (parsed to the default's type). An unknown
token or key raises ValueError listing the valid ones.
"""

from __future__ import annotations

import ml_collections

_BOOL = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}


def _typed(key: str, raw: str, default: object) -> object:
    if isinstance(default, tuple):
        if raw not in default:
            raise ValueError(f"config arg: {key}={raw!r} is not one of {default}")
        return raw
    if isinstance(default, bool):
        if raw.lower() not in _BOOL:
            raise ValueError(f"config arg: {key}={raw!r} is not a bool")
        return _BOOL[raw.lower()]
    try:
        return type(default)(raw)
    except ValueError as e:
        raise ValueError(f"config arg: {key}={raw!r} is not a {type(default).__name__}") from e


def parse_arg(arg: str | None, **spec: object) -> ml_collections.ConfigDict:
    """Parses a config's variant string "tok,key=value,..." against typed defaults `spec`.

    Args:
      arg: the part after the colon in `configs/x.py:arg` (None or "" = all defaults).
      **spec: key -> default: a tuple of allowed strings (default: the first), a bool flag, or an
        int / float / str value.
    Returns:
      a ConfigDict with one entry per key of `spec`.
    Raises:
      ValueError: an unknown token or key, a value of the wrong type, or two tokens for one key.
    """
    out = {k: (v[0] if isinstance(v, tuple) else v) for k, v in spec.items()}
    seen: set[str] = set()
    for tok in [t.strip() for t in (arg or "").split(",") if t.strip()]:
        key, eq, raw = tok.partition("=")
        if not eq:
            flags = [k for k, v in spec.items() if isinstance(v, bool) and k == tok]
            choices = [k for k, v in spec.items() if isinstance(v, tuple) and tok in v]
            if not flags and not choices:
                valid = [k for k, v in spec.items() if isinstance(v, bool)]
                valid += [c for v in spec.values() if isinstance(v, tuple) for c in v]
                raise ValueError(f"config arg: unknown variant {tok!r} in {arg!r}; use {valid}")
            key, raw = (flags or choices)[0], ("true" if flags else tok)
        if key not in spec:
            raise ValueError(f"config arg: unknown key {key!r} in {arg!r}; keys: {list(spec)}")
        if key in seen:
            raise ValueError(f"config arg: {key!r} given twice in {arg!r}")
        seen.add(key)
        out[key] = _typed(key, raw, spec[key])
    return ml_collections.ConfigDict(out)


def digits_data() -> ml_collections.ConfigDict:
    """scikit-learn digits, 8x8 images as 16 tokens of 2x2 patches, split seed 0."""
    return ml_collections.ConfigDict({
        "name": "digits",
        "seed": 0,
        "patch_size": 2,
        "data_dir": ml_collections.config_dict.placeholder(str),
    })


def transformer(**overrides: object) -> ml_collections.ConfigDict:
    """The encoder classifier (`routecal.models.transformer.ModelConfig` keys), dense MLPs."""
    model = ml_collections.ConfigDict({
        "d_model": 64,
        "n_layers": 4,
        "n_heads": 4,
        "mlp_dim": 128,
        "residual": "standard",
        "n_blocks": 2,
        "dropout": 0.0,
        "mlp_type": "dense",
    })
    model.update(overrides)
    return model


def moe(model: ml_collections.ConfigDict, **overrides: object) -> ml_collections.ConfigDict:
    """Adds the MoE keys to `model`: top-2 of 4 experts, capacity 1.25, Switch load balancing
    (1e-2) and ST-MoE z-loss (1e-3) on every layer."""
    model.mlp_type = "moe"
    model.n_experts = 4
    model.top_k = 2
    model.capacity_factor = 1.25
    model.moe_every = 1
    model.lb_coef = 1e-2
    model.z_coef = 1e-3
    model.vmoer = ml_collections.ConfigDict()
    model.update(overrides)
    return model


def train(**overrides: object) -> ml_collections.ConfigDict:
    """optax AdamW with warm-up/cosine (`routecal.training.train`); every key explicit."""
    block = ml_collections.ConfigDict({
        "steps": 800,
        "batch_size": 64,
        "lr": 2e-3,
        "warmup": 100,
        "weight_decay": 0.05,
        "grad_clip": 1.0,
        "input_noise": 0.0,  # std of Gaussian pixel noise on training tokens
        "checkpoint_every": 400,
        "eval_every": 400,
        "log_every": 50,
        "trainable": "all",
        "init_from": ml_collections.config_dict.placeholder(str),
    })
    block.update(overrides)
    return block


def shrink(cfg: ml_collections.ConfigDict, *, quick: bool, tiny: bool) -> ml_collections.ConfigDict:
    """The encoder configs' small variants, in place: `quick` (d_model 32, 2 layers, 400 steps: a
    model that still learns, in seconds) and `tiny` (d_model 16, 12 steps: test-size, does not
    learn; applied after quick, so "quick,tiny" is tiny)."""
    if quick:
        cfg.model.update(d_model=32, n_layers=2, n_heads=2, mlp_dim=64)
        cfg.train.update(steps=400, batch_size=32, lr=3e-3, warmup=40, checkpoint_every=200,
                         eval_every=400)
    if tiny:
        cfg.model.update(d_model=16, n_layers=2, n_heads=2, mlp_dim=32)
        cfg.train.update(steps=12, batch_size=16, lr=2e-3, warmup=2, checkpoint_every=4,
                         eval_every=6, log_every=2)
    return cfg


def experiment(data: ml_collections.ConfigDict, model: ml_collections.ConfigDict,
               train_block: ml_collections.ConfigDict, seed: int = 0) -> ml_collections.ConfigDict:
    """A training config: seed, data, model, train (what `routecal train` reads)."""
    cfg = ml_collections.ConfigDict()
    cfg.seed = seed
    cfg.data = data
    cfg.model = model
    cfg.train = train_block
    return cfg
