"""Rewrites a README "what we found" block (compact tables) from a study workdir's results.json.

    routecal study --config configs/study.py --workdir runs/study
    python experiments/readme_numbers.py --workdir runs/study \
        --command "routecal study --config configs/study.py" --machine "2-core CPU"
    python experiments/readme_numbers.py --workdir runs/study --check   # exit 1 if README differs
    python experiments/readme_numbers.py --workdir runs/study_lm --block found-lm \
        --command "routecal study --config configs/study_lm.py" \
        --note "rows as clusters; being redone with documents as clusters (issue 22)"  # LM block

Each block lives between its markers (`routecal.report.readme.markers`); everything in it is generated
from `W/results.json` (and the stage times in `W/stages/*.json` when results.json has no wall
time), so the README's numbers are always those of a real run.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys

from routecal.report import readme


def stage_seconds(workdir: pathlib.Path) -> dict[str, float]:
    """{stage name: seconds} from `W/stages/*.json` (stages that recorded their time)."""
    out = {}
    for p in sorted((workdir / "stages").glob("*.json")):
        value = json.loads(p.read_text())
        if isinstance(value, dict) and isinstance(value.get("seconds"), int | float):
            out[p.stem] = float(value["seconds"])
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workdir", required=True, help="a finished study's workdir (results.json)")
    p.add_argument("--readme", default="README.md")
    p.add_argument("--command", default=None,
                   help="the command that made the run (default: from results meta)")
    p.add_argument("--machine", default="", help='e.g. "2-core CPU, idle"')
    p.add_argument("--note", default="", help="a caveat printed in bold on the block's first line")
    p.add_argument("--check", action="store_true", help="exit 1 if the README block differs")
    p.add_argument("--block", default="found",
                   help='the README block to rewrite: "found" (digits study), "found-lm" (LM study), '
                        '"found-vmoer-lm" (VMoER LM experiment)')
    args = p.parse_args(argv)
    w = pathlib.Path(args.workdir)
    path = w / "results.json"
    if not path.exists() and (w / "vmoer_lm_results.json").exists():  # the VMoER LM experiment
        path = w / "vmoer_lm_results.json"
        out = json.loads(path.read_text())
        command = args.command or f"python experiments/vmoer_lm.py --workdir {w}"
        block = readme.vmoer_lm_block(out, command=command, source=f"{w.name}/{path.name}",
                                      machine=args.machine, name=args.block, note=args.note)
        return _write(pathlib.Path(args.readme), block, args.block, args.check, path)
    if not path.exists():
        raise SystemExit(f"readme_numbers: workdir: no results.json in {w} (run the study first)")
    results = json.loads(path.read_text())
    if args.block == "found-vmoer-lm":  # the VMoER LM experiment: the study of that section alone
        command = args.command or f"python experiments/vmoer_lm.py --workdir {w}"
        block = readme.vmoer_lm_block(results.get("vmoer", {}), command=command,
                                      source=f"{w.name}/results.json", machine=args.machine,
                                      name=args.block, note=args.note)
        return _write(pathlib.Path(args.readme), block, args.block, args.check, path)
    meta = results.setdefault("meta", {})
    if meta.get("wall_seconds") is None and not meta.get("stage_seconds"):
        meta["stage_seconds"] = stage_seconds(w)
    command = args.command or meta.get("command") or f"routecal study --workdir {w}"
    block = readme.found_block(results, command=command, source=f"{w.name}/results.json",
                               machine=args.machine, name=args.block, note=args.note)
    return _write(pathlib.Path(args.readme), block, args.block, args.check, path)


def _write(readme_path: pathlib.Path, block: str, name: str, check: bool,
           path: pathlib.Path) -> int:
    """Swaps `block` into the README (or, with `check`, exits 1 if it differs)."""
    if not readme_path.exists():
        raise SystemExit(f"readme_numbers: readme: no such file {str(readme_path)!r}")
    old = readme_path.read_text()
    new = readme.replace_block(old, block, name)
    if check:
        if new != old:
            print(f"{readme_path}: the {name} block differs from {path}", file=sys.stderr)
            return 1
        return 0
    readme_path.write_text(new)
    print(f"{readme_path}: {name} block rewritten from {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
