"""Compare two results.json leaf by leaf: do two runs give the same numbers?

    python benchmarks/compare_results.py A/results.json B/results.json            # exact
    python benchmarks/compare_results.py A/results.json B/results.json --rtol 1e-6 --atol 1e-12
    python benchmarks/compare_results.py A/results.json B/results.json --rename paper=within_bin

A leaf is a number, string, bool or null at a path such as `diagnostics.tests[3].p_value`. Numbers
are equal when |a - b| <= atol + rtol * |b| (default: exactly equal; NaN equals NaN); other leaves
must be identical; a path present on one side only is a difference. Fields that record *when, where
and with what* a run was made rather than what it found are skipped wherever they occur (`IGNORED`,
plus `--ignore KEY`): wall and CPU times, peak memory, package versions, devices and backend, and
`config_dir` (the checkout's absolute path). Prints the number of leaves compared, then every
difference with its path; exits 1 when there is any difference, 0 otherwise. `--rename OLD=NEW`
(repeatable) maps a renamed name in A before comparing: every dict key and every string leaf
equal to OLD becomes NEW (names inside longer strings, e.g. sentences, are left as they are and
show as differences); `--rename-value OLD=NEW` does so for string leaves only (a name that is
also a field's key, e.g. the test "minimum_detectable_gap" beside its field of that name).
`--key LIST=FIELD,FIELD` (repeatable) compares the rows of the list at dotted path LIST (e.g.
`diagnostics.tests=test,arch,seed,feature`) by those fields' values rather than by position, on
both sides, so reordered rows compare as the same rows (a row's path then reads
`LIST{value|value}.field`).
"""

from __future__ import annotations

import argparse
import json
import math
import pathlib
import sys
from collections.abc import Iterator
from typing import Any

# Keys skipped at any depth: timing, host and version fields.
IGNORED = frozenset({
    # timing
    "seconds", "time_s", "train_time_s", "train_seconds", "predict_seconds", "wall_seconds",
    "stage_seconds", "compare_seconds", "sweep_seconds", "seconds_compare", "seconds_sweep",
    "wall_s", "cpu_s", "runs_wall_s", "runs_cpu_s", "cpu_time_s",
    # host and versions
    "versions", "devices", "jax_backend", "peak_rss_mb", "config_dir",
})  # fmt: skip


def leaves(value: Any, path: str = "", ignored: frozenset[str] = IGNORED) -> Iterator[tuple[str, Any]]:
    """(path, leaf) for every leaf of a JSON value, skipping keys in `ignored`."""
    if isinstance(value, dict):
        for k in sorted(value):
            if k not in ignored:
                yield from leaves(value[k], f"{path}.{k}" if path else str(k), ignored)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from leaves(v, f"{path}[{i}]", ignored)
    else:
        yield path, value


def _is_number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool)


def same(a: Any, b: Any, *, rtol: float = 0.0, atol: float = 0.0) -> bool:
    """Leaf equality: numbers within atol + rtol * |b| (NaN == NaN, inf == inf), others identical."""
    if _is_number(a) and _is_number(b):
        if math.isnan(a) or math.isnan(b):
            return math.isnan(a) and math.isnan(b)
        if math.isinf(a) or math.isinf(b):
            return a == b
        return abs(a - b) <= atol + rtol * abs(b)
    return type(a) is type(b) and a == b


def compare(
    a: Any, b: Any, *, rtol: float = 0.0, atol: float = 0.0, ignored: frozenset[str] = IGNORED
) -> tuple[int, list[str]]:
    """(number of leaves compared, differences as "path: a -> b" lines) of two JSON values."""
    la, lb = dict(leaves(a, ignored=ignored)), dict(leaves(b, ignored=ignored))
    diffs = []
    for path in sorted(la.keys() | lb.keys()):
        if path not in lb:
            diffs.append(f"{path}: only in A ({la[path]!r})")
        elif path not in la:
            diffs.append(f"{path}: only in B ({lb[path]!r})")
        elif not same(la[path], lb[path], rtol=rtol, atol=atol):
            diffs.append(f"{path}: {la[path]!r} -> {lb[path]!r}")
    return len(la.keys() & lb.keys()), diffs


def rename(value: Any, names: dict[str, str], values: dict[str, str] | None = None) -> Any:
    """`value` with every dict key and string leaf found in `names`, and every string leaf found
    in `values`, replaced by its new name."""
    values = {**names, **(values or {})}
    if isinstance(value, dict):
        return {names.get(k, k): rename(v, names, values) for k, v in value.items()}
    if isinstance(value, list):
        return [rename(v, names, values) for v in value]
    if isinstance(value, str):
        return values.get(value, value)
    return value


def keyed(value: Any, path: str, fields: list[str]) -> Any:
    """`value` with the list at dotted `path` (absent: unchanged) turned into a dict of its rows
    keyed by the `fields` values joined with "|" (a missing field reads as None); a repeated key
    is a ValueError."""
    head, _, rest = path.partition(".")
    if not isinstance(value, dict) or head not in value:
        return value
    if rest:
        return {**value, head: keyed(value[head], rest, fields)}
    rows: dict[str, Any] = {}
    for row in value[head]:
        k = "{" + "|".join(str(row.get(f)) for f in fields) + "}"
        if k in rows:
            raise ValueError(f"--key {path}: rows repeat the key {k}")
        rows[k] = row
    return {**value, head: rows}


def _load(path: str) -> Any:
    p = pathlib.Path(path)
    try:
        return json.loads(p.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise SystemExit(f"{path}: cannot read a JSON file ({e})") from None


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("a", help="first results.json")
    ap.add_argument("b", help="second results.json")
    ap.add_argument("--rtol", type=float, default=0.0, help="relative tolerance (default 0: exact)")
    ap.add_argument("--atol", type=float, default=0.0, help="absolute tolerance (default 0: exact)")
    ap.add_argument("--ignore", action="append", default=[], metavar="KEY",
                    help=f"skip KEY at any depth, besides {sorted(IGNORED)}")  # fmt: skip
    ap.add_argument("--rename", action="append", default=[], metavar="OLD=NEW",
                    help="in A, a dict key or string leaf equal to OLD reads as NEW")
    ap.add_argument("--rename-value", action="append", default=[], metavar="OLD=NEW",
                    help="in A, a string leaf (not a key) equal to OLD reads as NEW")
    ap.add_argument("--key", action="append", default=[], metavar="LIST=FIELD,...",
                    help="compare the rows of list LIST (dotted path) by these fields' values")
    args = ap.parse_args(argv)
    if args.rtol < 0 or args.atol < 0:
        ap.error("--rtol / --atol: must be >= 0")
    maps: dict[str, dict[str, str]] = {"rename": {}, "rename_value": {}}
    for flag, table in maps.items():
        for item in getattr(args, flag):
            old, sep, new = item.partition("=")
            if not sep or not old or not new:
                ap.error(f"--{flag.replace('_', '-')}: expected OLD=NEW, got {item!r}")
            table[old] = new
    a, b = rename(_load(args.a), maps["rename"], maps["rename_value"]), _load(args.b)
    for item in args.key:
        path, sep, fields = item.partition("=")
        if not sep or not path or not fields:
            ap.error(f"--key: expected LIST=FIELD,..., got {item!r}")
        a, b = (keyed(x, path, fields.split(",")) for x in (a, b))
    n, diffs = compare(
        a, b,
        rtol=args.rtol, atol=args.atol,
        ignored=IGNORED | set(args.ignore),
    )  # fmt: skip
    print(f"{n} leaves compared (rtol={args.rtol:g}, atol={args.atol:g}); {len(diffs)} differ")
    for d in diffs:
        print(f"  {d}")
    return 1 if diffs else 0


if __name__ == "__main__":
    sys.exit(main())
