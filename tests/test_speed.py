"""bench/speed.py --trained: what a user runs to time their own exports against a dense baseline."""

import json
import os
import subprocess
import sys

import run_qa
from conftest import RECIPES, REPO
from helpers import qa_args


def test_trained_exports_are_timed_against_the_first_one(qa_model_dir, squad_files, tmp_path):
    dense, pruned = tmp_path / "dense", tmp_path / "pruned"
    run_qa.main(qa_args(qa_model_dir, squad_files, dense, "--do_train", "--max_steps", "2", "--do_onnx_export"))
    run_qa.main(qa_args(qa_model_dir, squad_files, pruned, "--do_train", "--do_onnx_export", "--nm_prune_config",
                        os.path.join(RECIPES, "80sparsity1shot.yaml"), "--recipe_args", '{"num_epochs": 1.0}'))
    results = tmp_path / "results"
    done = subprocess.run([sys.executable, os.path.join(REPO, "bench", "speed.py"), "--trained", str(dense),
                           str(pruned), "--rounds", "1", "--no_readme", "--results_dir", str(results)],
                          capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads((results / "speed_trained_qa.json").read_text())
    timed = {(os.path.basename(r["folder"]), r["measure"], r["engine"]) for r in result["rows"] if "median_ms" in r}
    assert {("dense", "latency 1x128", "onnxruntime"), ("pruned", "throughput 16x384", "onnxruntime")} <= timed
    lines = (results / "speed_trained_qa.md").read_text().splitlines()
    # the baseline against itself is 1.00x; the pruned file shows the sparsity its recipe promised
    assert any(line.startswith("| dense | FP32 | 0% |") and "onnxruntime" in line and "(1.00x)" in line
               for line in lines)
    assert any(line.startswith("| pruned | FP32 | 80% |") and "onnxruntime" in line for line in lines)

    missing = subprocess.run([sys.executable, os.path.join(REPO, "bench", "speed.py"), "--trained", str(tmp_path),
                              "--no_readme", "--results_dir", str(results)], capture_output=True, text=True)
    assert missing.returncode != 0 and "no model.onnx" in missing.stderr
