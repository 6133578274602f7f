"""Every router's FLOP overhead over the deterministic MoE layer, from XLA cost analysis.

    PYTHONPATH=. python benchmarks/vmoer_flops.py

For the small digits layer and the realistic MoE layer (d_model 1536, 40 SwiGLU experts of width
512, top-8: the shape of Granite-3.0-3B-A800M) it prints, per router (det, mfvr, lowrank, fcvr,
vtsr, fixed_temp, mc_dropout, ensemble, swag), the FLOPs of one router call in training (one
sample) and at inference (S = 8 samples / masks / SWAG weight samples, M = 4 members, averaged
inside the router), and the overhead in percent of the deterministic layer (router + experts).
Posterior heads are MLPs of hidden width 64 (`vmoer_head_hidden`). Nothing is allocated: modules are built with `nnx.eval_shape`.
The LAST line is `fcvr_overhead_percent=<value>` (FCVR at inference on the realistic layer).
"""

from __future__ import annotations

import sys

from routecal import flops


def main() -> int:
    fcvr = None
    for shape in (flops.SMALL_LAYER, flops.REALISTIC_LAYER):
        det = flops.router_flops(shape, "det", train=False)
        layer = det + flops.expert_flops(shape)
        print(
            f"{shape.name}: d_model {shape.d_model}, {shape.n_experts} experts, top-"
            f"{shape.top_k}, F={shape.expert_dim}, {shape.n_tokens} tokens/call; "
            f"deterministic layer {layer:.4g} FLOPs (router {det:.4g})"
        )
        print(
            f"  {'router':<12}{'train FLOPs':>14}{'infer FLOPs':>14}{'train %':>10}{'infer %':>10}"
        )
        for name, r in flops.router_overheads(shape).items():
            print(
                f"  {name:<12}{r['train']:>14.4g}{r['infer']:>14.4g}"
                f"{r['train_pct']:>10.3f}{r['infer_pct']:>10.3f}"
            )
            if shape is flops.REALISTIC_LAYER and name == "fcvr":
                fcvr = r["infer_pct"]
        print()
    print(f"fcvr_overhead_percent={fcvr:.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
