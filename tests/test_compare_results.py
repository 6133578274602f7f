"""benchmarks/compare_results.py: leaf-by-leaf comparison of two results.json."""

import json
import math
import pathlib
import subprocess
import sys

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import compare_results as cr  # noqa: E402


def test_leaves_paths_and_ignored_keys():
    doc = {"a": {"b": [1, {"c": "x"}]}, "versions": {"jax": "1"}, "d": {"seconds": 3.0, "e": None}}
    assert list(cr.leaves(doc)) == [("a.b[0]", 1), ("a.b[1].c", "x"), ("d.e", None)]


def test_compare_counts_and_names_every_difference():
    a = {"p": [0.1, 0.2, float("nan")], "s": "yes", "only_a": 1, "t": {"wall_seconds": 1.0}, "b": True}
    b = {"p": [0.1, 0.2 + 1e-12, float("nan")], "s": "no", "only_b": 2, "t": {"wall_seconds": 9.0},
         "b": 1}  # fmt: skip
    n, diffs = cr.compare(a, b)
    assert n == 5  # p[0], p[1], p[2], s, b (wall_seconds ignored; only_a / only_b not shared)
    assert diffs == [
        "b: True -> 1",  # a bool is not the number 1
        "only_a: only in A (1)",
        "only_b: only in B (2)",
        f"p[1]: 0.2 -> {0.2 + 1e-12!r}",
        "s: 'yes' -> 'no'",
    ]
    n, diffs = cr.compare(a["p"], b["p"], rtol=1e-9)
    assert (n, diffs) == (3, [])
    assert cr.same(math.inf, math.inf) and not cr.same(math.inf, -math.inf)
    assert not cr.same(0.0, 1e-300) and cr.same(0.0, 1e-300, atol=1e-299)


def test_command_line(tmp_path):
    a, b = tmp_path / "a.json", tmp_path / "b.json"
    a.write_text(json.dumps({"x": [1, 2], "versions": {"jax": "0.7"}}))
    b.write_text(json.dumps({"x": [1, 3], "versions": {"jax": "0.8"}}))
    script = str(ROOT / "benchmarks" / "compare_results.py")
    out = subprocess.run([sys.executable, script, a, b], capture_output=True, text=True)
    assert out.returncode == 1
    assert out.stdout.splitlines() == ["2 leaves compared (rtol=0, atol=0); 1 differ", "  x[1]: 2 -> 3"]
    out = subprocess.run([sys.executable, script, a, a], capture_output=True, text=True)
    assert out.returncode == 0 and "0 differ" in out.stdout
    out = subprocess.run([sys.executable, script, a, b, "--ignore", "x"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("0 leaves compared")


def test_rename_maps_keys_and_whole_string_leaves_of_a(tmp_path):
    a = {"tests": [{"test": "paper", "p": 0.1}], "labels": {"paper": "the paper's test"}}
    b = {"tests": [{"test": "within_bin", "p": 0.1}], "labels": {"within_bin": "the paper's test"}}
    assert cr.rename(a, {"paper": "within_bin"}) == b  # the sentence keeps its word "paper's"
    assert cr.compare(cr.rename(a, {"paper": "within_bin"}), b) == (3, [])
    pa, pb = tmp_path / "a.json", tmp_path / "b.json"
    pa.write_text(json.dumps(a))
    pb.write_text(json.dumps(b))
    script = str(ROOT / "benchmarks" / "compare_results.py")
    out = subprocess.run([sys.executable, script, pa, pb, "--rename", "paper=within_bin"],
                         capture_output=True, text=True)
    assert out.returncode == 0 and "3 leaves compared" in out.stdout
    out = subprocess.run([sys.executable, script, pa, pb, "--rename", "paper"],
                         capture_output=True, text=True)
    assert out.returncode == 2 and "OLD=NEW" in out.stderr


def test_rename_value_leaves_keys_alone():
    a = {"test": "minimum_detectable_gap", "minimum_detectable_gap": 0.1}
    b = {"test": "minimum_detectable_gap_conditional", "minimum_detectable_gap": 0.1}
    assert cr.rename(a, {}, {"minimum_detectable_gap": "minimum_detectable_gap_conditional"}) == b
    assert cr.rename(a, {"minimum_detectable_gap": "x"}) == {"test": "x", "x": 0.1}


def test_key_compares_reordered_rows_by_their_fields():
    a = {"d": {"rows": [{"t": "x", "s": 0, "p": 0.1}, {"t": "y", "s": 0, "p": 0.2}]}}
    b = {"d": {"rows": [{"t": "y", "s": 0, "p": 0.2}, {"t": "x", "s": 0, "p": 0.3}]}}
    ka, kb = (cr.keyed(x, "d.rows", ["t", "s"]) for x in (a, b))
    n, diffs = cr.compare(ka, kb)
    assert n == 6 and diffs == ["d.rows.{x|0}.p: 0.1 -> 0.3"]
    assert cr.keyed(a, "d.none", ["t"]) == a
