"""The README's generated "what we found" block (routecal.report.readme, experiments/readme_numbers)."""

from __future__ import annotations

import json

import pytest

from routecal.report import readme
from routecal.stats import seeds


def _results(wall: float | None = 377.0) -> dict:
    runs = [
        {"arch": a, "seed": s, "test_accuracy": acc, "train_seconds": t}
        for (a, s, acc, t) in [
            ("full", 0, 0.969, 14.2), ("full", 1, 0.986, 33.0), ("block", 0, 0.975, 20.0),
        ]
    ]
    meta = {"title": "a study", "versions": {"routecal": "0.1", "jax": "0.4", "numpy": "2"},
            "config": {"diagnostics": {"power": 0.8}}}
    if wall is not None:
        meta["wall_seconds"] = wall
    # 4 conditional cells (p 0.001, 0.01, 0.2, 0.5; Holm rejects 1, BH 2) and 2 paper cells.
    tests = [
        {"test": "conditional", "arch": "full", "feature": f"f{i}", "p_value": p, "p_holm": h,
         "p_bh": b}
        for i, (p, h, b) in enumerate([(0.001, 0.004, 0.004), (0.01, 0.03 * 2, 0.02),
                                       (0.2, 0.4, 0.27), (0.5, 0.5, 0.5)])
    ] + [{"test": "within_bin", "arch": "full", "feature": "f0", "p_value": 0.3,
          "p_holm": 0.6, "p_bh": 0.3}] * 2
    power = [{"test": "conditional", "domain": "all", "arch": "full", "seed": s, "mdg": g}
             for s, g in enumerate((0.05, 0.07, 0.06))]
    band = lambda m, lo, hi: {"mean": m, "min": lo, "max": hi, "std": 0.0, "n": 2}  # noqa: E731
    summary = [
        {"arch": "full", "probe": "nw_ar_condcal", "bandwidth_rule": "cv_nll",
         "ece": band(0.0144, 0.013, 0.016)},
        {"arch": "full", "probe": "nw_confidence", "bandwidth_rule": "cv_nll",
         "ece": band(0.0300, 0.025, 0.035)},
    ]
    vmoer = {"table": {"det": {"stability": band(0.5, 0.49, 0.51), "ece": band(0.1, 0.09, 0.11),
                               "ood_auroc": band(0.8, 0.79, 0.81)},
                       "mfvr": {"stability": band(0.6, 0.59, 0.61), "ece": band(0.095, 0.09, 0.1),
                                "ood_auroc": band(0.7, 0.69, 0.71),
                                "flops_overhead_pct": band(42.0, 42.0, 42.0)}}}
    return {
        "meta": meta,
        "runs": runs,
        "diagnostics": {"alpha": 0.05, "tests": tests},
        "power": power,
        "probes": {"summary": summary},
        "vmoer": vmoer,
        "verdicts": {"diagnostics": "0 of 30 tests reject, a long sentence." * 50,
                     "probes": "inside the band."},
    }


def _readme(middle: str = "old numbers\n") -> str:
    return f"# title\n\nintro\n\n{readme.BEGIN}\n{middle}{readme.END}\n\n## next\n"


def test_block_is_compact_tables_of_the_numbers():
    res = _results()
    block = readme.found_block(res, command="routecal study --config c.py", source="W/results.json")
    assert block.startswith(readme.BEGIN) and block.endswith(readme.END)
    assert readme.check_block(block) == block and len(block) <= readme.MAX_BLOCK_CHARS
    assert "long sentence" not in block  # verdict prose stays in the report
    # 377 s = 6 min 17 s; full accuracies 96.9-98.6 (min, max of 2 seeds), block one value.
    assert "6 min 17 s wall time from a fresh workdir" in block
    assert "| full | 2 | 96.9-98.6 | 14-33 |" in block and "| block | 1 | 97.5 | 20 |" in block
    assert "routecal study --config c.py" in block and "W/results.json" in block
    assert "routecal 0.1" in block and "numpy" not in block
    # p < 0.05: 2 of 4 raw, Holm 1 (0.004), BH 2; chance 0.05 * 4 = 0.2.
    assert "| recommended test: rejections at alpha 0.05 | 2 of 4 (Holm 1, BH 2; 0.2 by chance)" in block
    assert "| paper test: rejections at alpha 0.05 | 0 of 2 (Holm 0, BH 0" in block
    assert "| detectable gap at power 0.8 (median, range) | 0.060 (0.050-0.070) over 3 cells |" in block
    # bands [0.013, 0.016] and [0.025, 0.035] do not overlap, AR-CondCal lower ECE: better.
    assert "| full: AR-CondCal vs NW-confidence ECE | 0.0144 vs 0.0300: better |" in block
    # stability 0.6 vs 0.5: +20.0%, bands apart (better); ECE 0.095 vs 0.1: -5.0%, bands overlap.
    assert "| mfvr | +20.0% (better) | -5.0% (within band) | -12.5% (worse) | 42.00% |" in block
    assert all(len(x) <= readme.MAX_LINE_CHARS for x in block.splitlines())


def test_check_block_rejects_long_blocks_and_lines():
    with pytest.raises(ValueError, match="characters, more than"):
        readme.check_block("x\n" * readme.MAX_BLOCK_CHARS)
    with pytest.raises(ValueError, match="line 2 has 301"):
        readme.check_block("ok\n" + "y" * 301)


def test_note_is_printed_on_the_provenance_line():
    block = readme.found_block(_results(), command="c", source="s", note="rows as clusters")
    assert "**rows as clusters**" in block.splitlines()[2]


def test_summed_stage_time_is_labelled_as_such():
    res = _results(wall=None)
    res["meta"]["stage_seconds"] = {"train": 60.0, "probes": 5.0}
    block = readme.found_block(res, command="c", source="s")
    assert "1 min 05 s summed stage time" in block
    assert " s wall" not in readme.found_block(_results(wall=None), command="c", source="s")


def test_replace_block_keeps_the_rest_and_is_idempotent():
    block = readme.found_block(_results(), command="c", source="s")
    text = _readme()
    once = readme.replace_block(text, block)
    assert "old numbers" not in once and block in once
    assert once.startswith("# title\n\nintro\n\n") and once.endswith("\n\n## next\n")
    assert readme.replace_block(once, block) == once


@pytest.mark.parametrize(
    "text, match",
    [
        ("no markers here", "markers not found"),
        (f"{readme.END}\n{readme.BEGIN}\n", "before"),
        (_readme() + _readme(), "more than once"),
    ],
)
def test_bad_readme_raises(text, match):
    with pytest.raises(ValueError, match=match):
        readme.replace_block(text, "x")


def test_results_without_verdicts_raise():
    with pytest.raises(ValueError, match="verdicts"):
        readme.found_block({"meta": {}}, command="c", source="s")



def test_script_rewrites_then_checks(tmp_path, experiment_script):
    w = tmp_path / "W"
    (w / "stages").mkdir(parents=True)
    (w / "results.json").write_text(json.dumps(_results(wall=None)))
    (w / "stages" / "train.json").write_text(json.dumps({"seconds": 30.0}))
    (w / "stages" / "probes.json").write_text(json.dumps({"seconds": 12.5, "rows": []}))
    path = tmp_path / "README.md"
    path.write_text(_readme())
    script = experiment_script("readme_numbers")
    args = ["--workdir", str(w), "--readme", str(path), "--command", "routecal study x"]
    assert script.main([*args, "--check"]) == 1
    assert script.main(args) == 0
    text = path.read_text()
    assert "| full | 2 | 96.9-98.6 | 14-33 |" in text and "42 s summed stage time" in text
    assert script.main([*args, "--check"]) == 0
    with pytest.raises(SystemExit, match="no results.json"):
        script.main(["--workdir", str(tmp_path / "nope"), "--readme", str(path)])


def test_named_blocks_are_rewritten_independently():
    res = _results()
    lm_begin, lm_end = readme.markers("found-lm")
    text = _readme() + f"\n{lm_begin}\nold lm\n{lm_end}\n"
    lm_block = readme.found_block(res, command="lm", source="s", name="found-lm")
    assert lm_block.startswith(lm_begin) and lm_block.endswith(lm_end)
    out = readme.replace_block(text, lm_block, "found-lm")
    assert "old lm" not in out and lm_block in out
    assert out.split(lm_begin)[0] == text.split(lm_begin)[0]  # the digits block untouched
    with pytest.raises(ValueError, match="name"):
        readme.markers("bad name")


def test_vmoer_lm_block_from_a_results_json():
    from statsmodels.stats.proportion import proportion_confint

    from routecal.report import vmoer_lm
    from routecal.training import vmoer_sources  # the section's metrics (its MCQA sources)

    metrics = ("accuracy", "stability", "ece", "ood_auroc_near", "ood_auroc_far",
               "flops_infer_pct")
    per_run = {name: {s: {m: 0.3 + 0.01 * s + 0.1 * k + 0.05 * (name == "mfvr")
                          for k, m in enumerate(metrics)} for s in (0, 1)}
               for name in ("det", "mfvr")}
    table = seeds.band_table(per_run, vmoer_sources.MCQA_METRICS, vmoer_sources.MCQA_LOWER)
    out = {"config": {"data": {"n_eval_items": 100}}, "per_run": per_run, "table": table,
           "markdown": vmoer_lm.markdown(table, ["det", "mfvr"], ["stability"]), "scoring": "loglik"}
    block = readme.vmoer_lm_block(out, command="c", source="s")
    begin, end = readme.markers("found-vmoer-lm")
    assert block.startswith(begin) and block.endswith(end)
    assert readme.check_block(block) == block
    lo, hi = proportion_confint(30, 100, method="wilson")
    assert f"seed 0 0.300 [{lo:.3f}, {hi:.3f}]" in block
    # mfvr's means are det's + 0.05 on every metric: stability (k = 1) 0.405 vs 0.455.
    rel = 100.0 * (0.455 / 0.405 - 1.0)
    assert f"| mfvr | {rel:+.1f}% (" in block
    assert "| router vs det | stability (+38%) | ece (-94%) |" in block
    with pytest.raises(ValueError, match="vmoer_lm_results"):
        readme.vmoer_lm_block({"verdicts": {}}, command="c", source="s")


def test_the_repository_readme_is_short_and_its_blocks_compact():
    import pathlib

    root = pathlib.Path(__file__).resolve().parents[2]
    text = (root / "README.md").read_text()
    assert len(text) < 12_000
    for name in ("found", "found-lm", "found-vmoer-lm"):
        begin, end = readme.markers(name)
        i, j = text.index(begin.split(" (")[0]), text.index(end) + len(end)
        readme.check_block(text[i:j])
    # The two commands a person needs; CI (.ci/run) installs and tests exactly the same way.
    tests = 'python -m pytest -m "not slow" -n 2 -q'
    assert 'pip install -e ".[test]" && ' + tests in text
    assert "pip install -e . && routecal study --config configs/study.py --workdir runs/study" in text
    ci = (root / ".ci" / "run").read_text()
    assert tests in ci and 'pip install -q -e ".[test]"' in ci
    assert "\n## Pretrained MoE checkpoints\n" in text


def test_digits_layout_pools_its_domain_into_one_rejections_row():
    """Digits results pool the splits into domain "all" (meta.domains {"in": ...} names the split):
    questions and answers, not the per-domain glance; equal cell counts share one row."""
    res = _results()
    res["meta"]["domains"] = {"in": "test"}
    cells = [(0.001, 0.003, 0.003), (0.02, 0.04, 0.03), (0.3, 0.3, 0.3)]
    res["diagnostics"]["tests"] = [
        {"test": t, "domain": "all", "arch": "full", "feature": f"f{i}", "p_value": p,
         "p_holm": h, "p_bh": b}
        for t in ("conditional", "within_bin") for i, (p, h, b) in enumerate(cells)]
    block = readme.found_block(res, command="routecal study", source="W/results.json")
    # p < 0.05 in 2 of 3 cells; Holm p 0.003, 0.04 < 0.05: 2; BH 2; chance 0.05 * 3 (0.150000...02) -> 0.2.
    row = "| rejections at 0.05 of 3 cells (Holm, BH; 0.2 by chance) | recommended 2 (2, 2); paper 2 (2, 2) |"
    assert row in block, block
    assert "| in |" not in block and "clusters: unit" not in block
