"""The `routecal` command: a thin parser over importable functions.

    routecal train   --config configs/attnres_digits.py[:quick] --workdir W [--config.key=value ...]
    routecal predict --workdir W
    routecal diagnose --predictions file.npz|shard_dir/ [--out DIR]
    routecal study   --config configs/study.py[:quick] --workdir W [--config.key=value ...]
    routecal report  --workdir W

Everything here can be done from Python with one import (see each subcommand's target).

Multi-host: `routecal --distributed <command> ...` on every process joins the job first
(`jax.distributed.initialize`); Cloud TPU pods, SLURM and Open MPI are detected, elsewhere add
`--coordinator-address HOST:PORT --num-processes N --process-id I`. Launch lines for each are in
`routecal.parallel` and the README's Scale section.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence


def _split_overrides(extra: Sequence[str]) -> list[str]:
    """Turns `--config.a.b=v` / `--config.a.b v` leftovers into `a.b=v` overrides."""
    out: list[str] = []
    items = list(extra)
    i = 0
    while i < len(items):
        tok = items[i]
        if not tok.startswith("--config."):
            raise ValueError(f"unrecognised argument {tok!r}")
        body = tok[len("--config.") :]
        if "=" not in body:
            if i + 1 >= len(items):
                raise ValueError(f"override {tok!r} needs a value")
            body = f"{body}={items[i + 1]}"
            i += 1
        out.append(body)
        i += 1
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="routecal", description=__doc__.split("\n\n")[0])
    p.add_argument(
        "--distributed", action="store_true",
        help="join a multi-host job first (jax.distributed.initialize; TPU pods, SLURM, MPI)",
    )
    p.add_argument("--coordinator-address", default=None, help="with --distributed: HOST:PORT")
    p.add_argument("--num-processes", type=int, default=None, help="with --distributed")
    p.add_argument("--process-id", type=int, default=None, help="with --distributed")
    sub = p.add_subparsers(dest="command", required=True)

    t = sub.add_parser("train", help="train a model from a config file")
    t.add_argument("--config", required=True, help="configs/x.py or configs/x.py:variant")
    t.add_argument("--workdir", required=True)

    pr = sub.add_parser("predict", help="write W/predictions/{calib,test}.npz with traces")
    pr.add_argument("--workdir", required=True)
    pr.add_argument("--every", type=int, default=1, help="LM: keep every k-th position")
    pr.add_argument("--min-position", type=int, default=0, help="LM: keep positions >= p")
    pr.add_argument("--max-tokens", type=int, default=None, help="LM: records per split at most")

    d = sub.add_parser("diagnose", help="diagnostics and probes on any model's traces (npz or "
                       "token shards)")
    d.add_argument("--predictions", required=True,
                   help="npz with probs, labels and routing summaries; or per-token / per-example "
                        "traces: an npz with confidence, correct, routing_<name> (optional doc_id "
                        "/ seq_id clusters) or a token-shard directory")
    d.add_argument(
        "--test-predictions", default=None,
        help="held-out npz on which the probes are scored (default: a random half of --predictions)",
    )
    d.add_argument("--out", default=None, help="output directory (default: next to the npz)")
    d.add_argument("--n-permutations", type=int, default=2000)
    d.add_argument("--seed", type=int, default=0)

    s = sub.add_parser("study", help="train, predict, diagnose, probe and report: the main job")
    s.add_argument("--config", default="configs/study.py")
    s.add_argument("--workdir", required=True)
    s.add_argument("--no-report", action="store_true", help="skip writing the report at the end")
    s.add_argument("--worker", action="store_true",
                   help="a second process sharing a running study's analysis stages "
                        "(start it once the study's models are trained and predicted)")

    r = sub.add_parser("report", help="write report.md and report.html from W/results.json")
    r.add_argument("--workdir", required=True)
    return p


def _join(kwargs: dict) -> None:
    """Joins the multi-host job (before any other JAX call) and says where this process stands."""
    from routecal import parallel

    parallel.initialize_distributed(**kwargs)
    import jax

    print(
        f"routecal: process {jax.process_index()} of {jax.process_count()}, "
        f"{jax.local_device_count()} local of {jax.device_count()} {jax.default_backend()} devices",
        file=sys.stderr, flush=True,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Runs one subcommand; bad input (a `ValueError`, e.g. a wrong override, a corrupt file or a
    workdir in use) ends with one line `routecal <cmd>: <message>` and exit status 1."""
    args, extra = build_parser().parse_known_args(argv)
    explicit = {
        k: getattr(args, k)
        for k in ("coordinator_address", "num_processes", "process_id")
        if getattr(args, k) is not None
    }
    if explicit and not args.distributed:
        raise SystemExit(f"routecal: {sorted(explicit)} need --distributed")
    try:
        _run(args, extra, explicit)
    except ValueError as e:
        raise SystemExit(f"routecal {args.command}: {e}") from e
    return 0


def _run(args: argparse.Namespace, extra: Sequence[str], explicit: dict) -> None:
    if args.distributed:
        _join(explicit)
    if args.command in ("train", "study"):
        from routecal.config import load_config

        cfg = load_config(args.config, _split_overrides(extra))
    elif extra:
        raise ValueError(f"unrecognised arguments {list(extra)}")

    if args.command == "train":
        from routecal.training import train

        train.train_and_evaluate(cfg, args.workdir)
    elif args.command == "predict":
        from routecal.training import predict

        lm_options = dict(
            every=args.every, min_position=args.min_position, max_tokens=args.max_tokens
        )
        predict.predict_workdir(args.workdir, lm_options=lm_options)
    elif args.command == "diagnose":
        from routecal.study import diagnose

        diagnose.diagnose_predictions(
            args.predictions,
            test_path=args.test_predictions,
            out_dir=args.out,
            n_permutations=args.n_permutations,
            seed=args.seed,
        )
    elif args.command == "study":
        from routecal.study import run as study

        study.run(cfg, args.workdir, write_report=not args.no_report, worker=args.worker)
    elif args.command == "report":
        from routecal.report import write_report

        write_report(args.workdir)


if __name__ == "__main__":
    sys.exit(main())
