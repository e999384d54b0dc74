"""ANALYZE=1 in the suite scripts: tools/analyze.py runs once for every finished run dir, then is skipped."""
import json

import pytest

from tests.test_suites_office import check, suite

QUICK = "train.iters=2 train.log_every=2 train.eval_every=2 train.ckpt_every=2"


@pytest.mark.slow  # the default run keeps tests/test_analyze.py's end-to-end analysis of a tiny run
def test_analyze_finished_runs_once(tmp_path):
    env = dict(METHODS="source_only", TASKS="optdigits", OPTS=QUICK, ANALYZE_OPTS="--max-points 40 --device CPU")
    run = tmp_path / "runs" / "source_only_optdigits" / "seed0"
    first = check(suite("run_digits.sh", tmp_path, tmp_path, **env))  # ANALYZE unset: train only
    assert "[run]" in first and "[analyze" not in first and not (run / "analysis.json").exists()

    second = check(suite("run_digits.sh", tmp_path, tmp_path, ANALYZE="1", **env))  # the finished run gets analysed
    assert "[skip] source_only optdigits seed 0" in second and "[analyze] source_only optdigits seed 0" in second
    assert "proxy A-distance" in second
    report = json.loads((run / "analysis.json").read_text())
    assert report["n_source"] == 40 and report["files"] == ["tsne.png", "curves.png", "confusion.png"]
    assert all((run / name).is_file() for name in report["files"])

    third = check(suite("run_digits.sh", tmp_path, tmp_path, ANALYZE="1", **env))  # analysis.json exists: skipped
    assert "[analyzed] source_only optdigits seed 0" in third and "[analyze]" not in third
