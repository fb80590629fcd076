"""The stages' one entry point: one parser, logging on stderr, one error -> exit-status mapping."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from retina_sr.stages import STAGES, main

ROOT = Path(__file__).resolve().parents[1]


def test_every_stage_has_a_three_line_script():
    for name in STAGES:
        script = ROOT / "workflow" / "scripts" / f"{name}.py"
        code = [line for line in script.read_text().splitlines() if line.strip()][1:]  # after the docstring
        assert len(code) == 3 and f'main("{name}")' in code[-1], script
        assert code[1].startswith('if __name__ == "__main__":'), script  # spawned workers re-import the script
    assert not (ROOT / "workflow" / "scripts" / "_common.py").exists()


def test_missing_input_is_one_line_on_stderr_with_status_2(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    rc = main("patches", ["--params", str(ROOT / "params.yaml"), "--threads", "1"])
    assert rc == 2
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "patches: error: data/processed/manifest.csv not found" in errors[0].getMessage()


def test_bad_parameters_are_status_2(tmp_path, caplog):
    bad = tmp_path / "p.yaml"
    bad.write_text("seed: -1\n")
    assert main("download", ["--params", str(bad)]) == 2
    assert "seed" in caplog.text and "out of range" in caplog.text


def test_usage_errors_come_from_argparse():
    with pytest.raises(SystemExit) as e:
        main("train", ["--phase", "l2"])
    assert e.value.code == 2


def test_script_process_prints_the_error_on_stderr_only(tmp_path):
    """As DVC/Snakemake run it: a stage process, no traceback, nothing on stdout."""
    env = {**os.environ, "MLFLOW_DISABLE_TELEMETRY": "true"}
    r = subprocess.run([sys.executable, str(ROOT / "workflow/scripts/preprocess.py"), "--params",
                        str(ROOT / "params.yaml"), "--threads", "1"], cwd=tmp_path, env=env, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 2 and r.stdout == ""
    assert r.stderr.strip() == "preprocess: error: data/raw/manifest.csv not found: run the download stage first"
    r = subprocess.run([sys.executable, "-m", "retina_sr.stages", "nope"], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 2 and "usage: python -m retina_sr.stages" in r.stderr
