"""VMoER on a pretrained MoE LM: the command line of configs/vmoer_pretrained.py.

    PYTHONPATH=. python experiments/vmoer_pretrained.py \
        --checkpoint /ckpt/granite-3.1-3b-a800m \
        --train obqa/train.jsonl:openbookqa --test obqa/test.jsonl:openbookqa \
        --near arc/ARC-Easy-Test.jsonl:arc,arc/ARC-Challenge-Test.jsonl:arc \
        --far medmcqa/dev.json:medmcqa --workdir runs/vmoer_granite \
        --routers det,mfvr,fcvr,vtsr --steps 500 --seeds 0,1,2 [--mesh fsdp=8] [--dtype bfloat16] \
        [--vmoer beta=0.01,samples=8,init_sigma=0.3,head_hidden=64,vtsr_entropy_weight=1] \
        [--stability-protocol layer_input] [--ood-scores entropy,max_prob,mi,...] \
        [--calib PATH:FORMAT --beta-grid 1e-4,1e-3,1e-2]

Each flag sets one field of configs/vmoer_pretrained.py (its docstring says what runs; the VMoER
section, `routecal.study.vmoer`, source "imported", runs it, run by the study alone:
`paper_setup.vmoer_section`, configs/study_pretrained.py with no architectures). --routers takes registry names;
an imported checkpoint is only retrofitted, so "mfvr" means "mfvr_retrofit". --vmoer sets
VMoER options (`routecal.models.routers.common.VMoERConfig` names without "vmoer_"). Files are
PATH:FORMAT (`routecal.data.mcqa_formats.FORMATS`) or tfds:NAME[:SPLIT]. Writes
<workdir>/tables/vmoer.csv, results.json (its "vmoer"), table.md, the report and the retrofit
cells vmoer/<router>/seed<k>/; a stopped run resumes.
"""

from __future__ import annotations

import argparse
import pathlib
from typing import Any

import paper_setup

from routecal.files import workdir as workdir_io
from routecal.models import routers, vmoer
from routecal.models.routers import common
from routecal.stats.uncertainty import MOE_OOD_SCORES

CONFIG = pathlib.Path(__file__).resolve().parents[1] / "configs" / "vmoer_pretrained.py"


def parse_vmoer(spec: str) -> dict[str, Any]:
    """'beta=0.01,samples=8,vtsr_reg=entropy' -> {"beta": 0.01, "samples": 8, ...} (values typed
    like the option's default); ValueError naming an unknown option or a bad pair."""
    out: dict[str, Any] = {}
    for pair in (p for p in spec.split(",") if p):
        key, eq, raw = pair.partition("=")
        name = f"vmoer_{key.removeprefix('vmoer_')}"
        if not eq or name not in common.DEFAULTS:
            raise ValueError(f"--vmoer: expected key=value with key in "
                             f"{sorted(k.removeprefix('vmoer_') for k in common.DEFAULTS)}, "
                             f"got {pair!r}")
        default = common.DEFAULTS[name]
        if isinstance(default, bool):
            out[name.removeprefix("vmoer_")] = raw.lower() in ("1", "true", "yes")
        else:
            out[name.removeprefix("vmoer_")] = type(default)(raw)
    return out


def _floats(spec: str) -> tuple[float, ...]:
    return tuple(float(x) for x in spec.split(",") if x)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    for name in ("checkpoint", "train", "test", "workdir"):
        ap.add_argument(f"--{name}", required=True)
    for name in ("near", "far", "calib"):
        ap.add_argument(f"--{name}", default="", help="PATH:FORMAT[,PATH:FORMAT]")
    ap.add_argument("--routers", default="det,mfvr,fcvr,vtsr")
    ap.add_argument("--seeds", default="0,1,2")
    ap.add_argument("--steps", type=int, default=500)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--checkpoint-every", type=int, default=100)
    ap.add_argument("--member-max-steps", type=int, default=0,
                    help="ensemble members: at most this many steps, stopping at their loss "
                         "plateau (checked from --steps on); 0 = 4 x --steps")
    ap.add_argument("--samples", type=int, default=8, help="stochastic passes (MI)")
    ap.add_argument("--sigmas", default="0.001,0.005,0.01,0.02,0.05")
    ap.add_argument("--stability-sigma", type=float, default=0.01)
    ap.add_argument("--max-questions", type=int, default=0, help="per split (0 = all)")
    ap.add_argument("--max-len", type=int, default=512)
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float32"])
    ap.add_argument("--mesh", default="")
    ap.add_argument("--vmoer", default="", help="VMoER options key=value[,key=value]")
    ap.add_argument("--stability-protocol", default="layer_input",
                    choices=list(vmoer.STABILITY_PROTOCOLS))
    ap.add_argument("--ood-scores", default=",".join(MOE_OOD_SCORES))
    ap.add_argument("--beta-grid", default="1e-6,1e-5,1e-4,1e-3,1e-2,1e-1",
                    help="betas tried per router on --calib (ignored without --calib)")
    a = ap.parse_args(argv)
    names = [routers.canonical(r.removesuffix("_retrofit")) for r in a.routers.split(",") if r]
    fields = {
        "checkpoint": a.checkpoint, "model.vmoer": parse_vmoer(a.vmoer),
        **{f"data.{k}": getattr(a, k) for k in ("train", "test", "near", "far", "calib",
                                                 "max_questions", "max_len")},
        "model.dtype": a.dtype, "model.mesh": a.mesh,
        "train.steps": a.steps, "train.lr": a.lr, "train.batch_size": a.batch_size,
        "train.checkpoint_every": a.checkpoint_every, "train.member_steps": a.steps,
        "train.member_max_steps": a.member_max_steps or 4 * a.steps,
        "experiment.routers": tuple(n if n == "det" else f"{n}_retrofit" for n in names),
        "experiment.seeds": tuple(int(s) for s in a.seeds.split(",")),
        "experiment.beta_grid": _floats(a.beta_grid),
        "experiment.sigmas": tuple(sorted(set(_floats(a.sigmas)) | {a.stability_sigma})),
        "experiment.stability_sigma": a.stability_sigma,
        "experiment.stability_protocol": a.stability_protocol,
        "experiment.ood_scores": tuple(x for x in a.ood_scores.split(",") if x),
        "experiment.mc_samples": a.samples, "experiment.eval_batch_size": a.batch_size,
    }  # fmt: skip
    overrides = [f"{k}={v!r}" for k, v in fields.items()]  # Python literals, strings quoted
    out = paper_setup.vmoer_section("study_pretrained.py", str(CONFIG), overrides, a.workdir)
    workdir_io.write_text(pathlib.Path(a.workdir) / "table.md", out["markdown"] + "\n")
    print(out["markdown"])
    return out


if __name__ == "__main__":
    main()
