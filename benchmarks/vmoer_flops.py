"""VMoER FLOP overhead over the deterministic MoE router, from XLA cost analysis (no allocation).

    PYTHONPATH=. python benchmarks/vmoer_flops.py

Prints, for the small default digits model (configs/moe_digits.py) and for a realistic MoE layer
(d_model 1536, 40 SwiGLU experts of width 512, top-8, 32 layers), the FLOPs per call of the
deterministic router, the logit-space router (train: 1 sample; inference: S = 8 samples), the
temperature router, the experts, and the overhead in percent of the deterministic MoE layer
(router + experts). For the small model it also prints the whole-model forward overhead. The LAST
line is `overhead_percent=<value>`: the logit-space router at inference on the realistic layer.
"""

from __future__ import annotations

import sys

from routecal import config, flops
from routecal.models.transformer import ModelConfig


def _small_model_cfg() -> ModelConfig:
    cfg = config.load_config("configs/moe_digits.py")
    return ModelConfig.from_config(cfg.model, seq_len=16, token_dim=4, num_classes=10)


def main() -> int:
    rows = []
    for shape in (flops.SMALL_LAYER, flops.REALISTIC_LAYER):
        r = flops.vmoer_overhead(shape)
        rows.append((shape, r))
    cols = [
        ("det_router", "det router"),
        ("logit_router_train", "logit (train)"),
        ("logit_router_infer", "logit (S=8)"),
        ("temp_router_infer", "temp router"),
        ("experts", "experts"),
    ]
    print("FLOPs per MoE-layer call (XLA cost analysis; tokens per call in brackets)")
    print(f"{'shape':<26}" + "".join(f"{c[1]:>16}" for c in cols))
    for shape, r in rows:
        label = f"{shape.name} [{shape.n_tokens}]"
        print(f"{label:<26}" + "".join(f"{r[c[0]]:>16.4g}" for c in cols))
    print()
    print("Overhead over the deterministic MoE layer (router + experts), percent")
    print(
        f"{'shape':<26}{'logit train':>14}{'logit infer':>14}{'temp train':>14}{'temp infer':>14}"
    )
    for shape, r in rows:
        print(
            f"{shape.name:<26}{r['overhead_logit_train_pct']:>14.3f}"
            f"{r['overhead_logit_infer_pct']:>14.3f}{r['overhead_temp_train_pct']:>14.3f}"
            f"{r['overhead_temp_infer_pct']:>14.3f}"
        )
    m = flops.model_overhead(_small_model_cfg(), batch_size=1)
    print()
    print("Small default model (configs/moe_digits.py), whole forward pass, one example:")
    print(
        f"  moe {m['model_moe']:.4g} FLOPs; vmoer_logit +{m['overhead_vmoer_logit_pct']:.2f}%; "
        f"vmoer_temp +{m['overhead_vmoer_temp_pct']:.2f}%"
    )
    print(f"overhead_percent={rows[1][1]['overhead_logit_infer_pct']:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
