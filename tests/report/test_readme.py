"""The README's generated "what we found" block (routecal.report.readme, experiments/readme_numbers)."""

from __future__ import annotations

import json

import pytest

from routecal.report import readme


def _results(wall: float | None = 377.0) -> dict:
    runs = [
        {"arch": a, "seed": s, "test_accuracy": acc, "train_seconds": t}
        for (a, s, acc, t) in [
            ("full", 0, 0.969, 14.2), ("full", 1, 0.986, 33.0), ("block", 0, 0.975, 20.0),
        ]
    ]
    meta = {"title": "a study", "versions": {"routecal": "0.1", "jax": "0.4", "numpy": "2"}}
    if wall is not None:
        meta["wall_seconds"] = wall
    return {
        "meta": meta,
        "runs": runs,
        "verdicts": {"diagnostics": "0 of 30 tests reject.", "probes": "inside the band."},
    }


def _readme(middle: str = "old numbers\n") -> str:
    return f"# title\n\nintro\n\n{readme.BEGIN}\n{middle}{readme.END}\n\n## next\n"


def test_block_carries_every_verdict_and_the_numbers_word_for_word():
    res = _results()
    block = readme.found_block(res, command="routecal study --config c.py", source="W/results.json")
    assert block.startswith(readme.BEGIN) and block.endswith(readme.END)
    for text in res["verdicts"].values():
        assert text in block
    # 377 s = 6 min 17 s; full accuracies 96.9-98.6 (min, max of the runs), block one value.
    assert "6 min 17 s" in block and "wall time from a fresh workdir" in block
    assert "full 96.9-98.6% test accuracy" in block and "block 97.5% test accuracy" in block
    assert "(14-33 s to train)" in block
    assert "routecal study --config c.py" in block and "W/results.json" in block
    assert "routecal 0.1" in block and "numpy" not in block.split("Made with")[1]


def test_summed_stage_time_is_labelled_as_such():
    res = _results(wall=None)
    res["meta"]["stage_seconds"] = {"train": 60.0, "probes": 5.0}
    block = readme.found_block(res, command="c", source="s")
    assert "1 min 05 s" in block and "summed stage time" in block
    assert "Time:" not in readme.found_block(_results(wall=None), command="c", source="s")


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
    assert "0 of 30 tests reject." in text and "42 s" in text and "summed stage time" in text
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

    from routecal.study import vmoer_lm_eval as ev

    metrics = ("accuracy", "stability", "ece", "ood_auroc_near", "ood_auroc_far",
               "flops_infer_pct")
    per_run = {name: {s: {m: 0.3 + 0.01 * s + 0.1 * k + 0.05 * (name == "mfvr")
                          for k, m in enumerate(metrics)} for s in (0, 1)}
               for name in ("det", "mfvr")}
    table = ev.summarize(per_run)
    out = {"config": {"data": {"n_eval_items": 100}}, "per_run": per_run, "table": table,
           "markdown": ev.to_markdown(table, ["det", "mfvr"]), "scoring": "loglik"}
    block = readme.vmoer_lm_block(out, command="c", source="s")
    begin, end = readme.markers("found-vmoer-lm")
    assert block.startswith(begin) and block.endswith(end)
    assert not any(line.startswith("|") for line in block.splitlines())  # no tables
    lo, hi = proportion_confint(30, 100, method="wilson")
    assert f"seed 0: 0.300 [{lo:.3f}, {hi:.3f}]" in block
    assert "stability (paper stability +38%): mfvr" in block
    with pytest.raises(ValueError, match="vmoer_lm_results"):
        readme.vmoer_lm_block({"verdicts": {}}, command="c", source="s")
