"""The benchmark harness keeps working: a tiny table on the built-in demo, resumable, regenerated from JSON."""

import json
import os
import subprocess
import sys

from conftest import REPO


def test_tiny_benchmark_writes_rows_and_resumes(tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    command = [sys.executable, os.path.join(REPO, "bench", "run.py"), "--tiny", "--results_dir", str(results),
               "--work_dir", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = json.load(open(results / "tiny.json"))
    dense, distilled = table["rows"]["dense"], table["rows"]["gmp80_distill"]
    assert dense["sparsity"] < 0.01 and abs(distilled["sparsity"] - 0.80) < 0.01
    assert distilled["distilled"] and distilled["pruning_epochs"] == 0.5
    assert "eval_f1" in distilled["metrics"] and distilled["onnx_parity_max_abs_diff"] < 1e-4
    assert "--teacher_model_name_or_path" in distilled["command"]
    markdown = (results / "tiny.md").read_text()
    assert "| gmp80_distill | GMP | 80% |" in markdown

    # finished rows are not run again
    again = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert again.returncode == 0 and "[bench]" not in again.stdout

    # on a fresh machine the teacher's model is gone (bench/work is not committed): it is trained again, and its
    # recorded row is kept as it was
    os.remove(work / "tiny" / "dense" / "model.safetensors")
    del table["rows"]["gmp80_distill"]
    (results / "tiny.json").write_text(json.dumps(table))
    third = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    assert "retraining its teacher dense" in third.stdout
    rerun = json.load(open(results / "tiny.json"))
    assert rerun["rows"]["dense"] == dense and "gmp80_distill" in rerun["rows"]
