"""Resume, signals, several processes, determinism: what a user can rely on after a crash."""

import json
import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

import run_qa
from conftest import RECIPES, REPO
from helpers import qa_args

GMP = os.path.join(RECIPES, "80sparsity2epoch.yaml")


def _json(path):
    with open(path) as handle:
        return json.load(handle)


def _sparsity_by_step(output_dir):
    return {h["step"]: h["sparsity"] for h in _json(output_dir / "trainer_state.json")["log_history"]
            if "sparsity" in h}


@pytest.fixture(scope="module")
def uninterrupted(qa_model_dir, squad_files, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("whole") / "out"
    run_qa.main(qa_args(qa_model_dir, squad_files, output_dir, "--do_train", "--do_eval", "--nm_prune_config", GMP,
                        "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "10"))
    return output_dir


def test_resume_continues_the_recipe_schedule(uninterrupted, qa_model_dir, squad_files, tmp_path):
    resumed = tmp_path / "out"
    resumed.mkdir()
    shutil.copytree(uninterrupted / "checkpoint-10", resumed / "checkpoint-10")
    run_qa.main(qa_args(qa_model_dir, squad_files, resumed, "--do_train", "--do_eval", "--nm_prune_config", GMP,
                        "--logging_steps", "1", "--save_strategy", "steps", "--save_steps", "10",
                        "--resume_from_checkpoint", "last"))
    whole_state, resumed_state = _json(uninterrupted / "trainer_state.json"), _json(resumed / "trainer_state.json")
    assert resumed_state["global_step"] == whole_state["global_step"]
    whole, resumed_log = _sparsity_by_step(uninterrupted), _sparsity_by_step(resumed)
    after = {step: value for step, value in resumed_log.items() if step > 10}  # 1-10 come from the checkpoint
    assert set(after) == {step for step in whole if step > 10}
    for step, sparsity in after.items():  # the same schedule, step for step
        assert sparsity == pytest.approx(whole[step], abs=0.005), step
    assert (_json(resumed / "sparsity_report.json")["targeted_sparsity"]
            == pytest.approx(_json(uninterrupted / "sparsity_report.json")["targeted_sparsity"], abs=1e-9))
    # optimizer state and data order are restored too: the resumed run ends where the whole one did
    assert _json(resumed / "eval_results.json")["eval_f1"] == pytest.approx(
        _json(uninterrupted / "eval_results.json")["eval_f1"], abs=1e-6)


def test_incomplete_checkpoint_is_skipped_by_last(uninterrupted, qa_model_dir, squad_files, tmp_path):
    from sparsebert.pipeline import last_complete_checkpoint

    shutil.copytree(uninterrupted / "checkpoint-10", tmp_path / "checkpoint-10")
    (tmp_path / "checkpoint-20").mkdir()  # cut off while being written
    (tmp_path / "checkpoint-20" / "model.safetensors").write_bytes(b"\0" * 10)
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-10")


def test_same_seed_same_metrics(uninterrupted, qa_model_dir, squad_files, tmp_path):
    run_qa.main(qa_args(qa_model_dir, squad_files, tmp_path / "again", "--do_train", "--do_eval",
                        "--nm_prune_config", GMP, "--logging_steps", "1"))
    assert _json(tmp_path / "again" / "eval_results.json")["eval_f1"] == _json(
        uninterrupted / "eval_results.json")["eval_f1"]
    assert _sparsity_by_step(tmp_path / "again") == _sparsity_by_step(uninterrupted)


def test_sigterm_saves_a_checkpoint_and_resume_finishes(qa_model_dir, squad_files, tmp_path):
    output_dir = tmp_path / "out"
    argv = qa_args(qa_model_dir, squad_files, output_dir, "--do_train", "--nm_prune_config", GMP,
                   "--recipe_args", '{"num_epochs": 40}', "--logging_steps", "1")
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "PYTHONUNBUFFERED": "1"}
    process = subprocess.Popen([sys.executable, os.path.join(REPO, "run_qa.py"), *argv], stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    for line in process.stdout:  # wait until training is under way
        if "'sparsity'" in line:
            break
    time.sleep(1.0)
    process.send_signal(signal.SIGTERM)
    rest = process.stdout.read()
    assert process.wait(timeout=120) == 128 + signal.SIGTERM, rest[-2000:]
    assert "Stopped by SIGTERM" in rest
    checkpoints = [p for p in os.listdir(output_dir) if p.startswith("checkpoint-")]
    assert len(checkpoints) == 1 and (output_dir / checkpoints[0] / "trainer_state.json").is_file()
    stopped_at = _json(output_dir / checkpoints[0] / "trainer_state.json")["global_step"]
    assert 0 < stopped_at < 600  # mid-run, and no step lost: the checkpoint is at the step it stopped
    assert not (output_dir / "model.safetensors").exists()  # nothing passes for a finished model
    clock = _json(output_dir / checkpoints[0] / "training_time.json")  # the time spent up to that step
    assert clock["global_step"] == stopped_at and clock["train_seconds"] > 1.0

    run_qa.main(argv + ["--resume_from_checkpoint", "last"])
    assert _json(output_dir / "trainer_state.json")["global_step"] == 600  # 15 steps x 40 epochs
    # the training time counts both attempts, not only the last one as the Trainer's train_runtime does
    results = _json(output_dir / "all_results.json")
    assert results["train_runtime_all_attempts"] == pytest.approx(clock["train_seconds"] + results["train_runtime"],
                                                                  abs=2.0)
    assert _json(output_dir / "sparsity_report.json")["targeted_sparsity"] == pytest.approx(0.8, abs=0.005)


def test_a_checkpoint_without_its_training_time_leaves_the_total_unknown(tmp_path):
    from sparsebert.trainer import TrainingClock

    clock = TrainingClock()
    clock.start(str(tmp_path))  # a checkpoint saved before checkpoints kept their time
    assert clock.seconds() is None
    (tmp_path / TrainingClock.file_name).write_text('{"global_step": 5, "train_seconds": 100.0}')
    clock.start(str(tmp_path))
    assert 100.0 <= clock.seconds() < 105.0


def test_torchrun_two_processes_follow_the_same_schedule(qa_model_dir, squad_files, tmp_path):
    """2 processes x batch 4 must take the optimizer steps of 1 process x batch 8: with the Trainer's defaults on
    CPU each process trained alone on all the data (twice the steps) while the exit status stayed 0."""
    # with a teacher and layer dropping too: one distillation path, whatever the number of processes
    common = ["--do_train", "--nm_prune_config", GMP, "--logging_steps", "1", "--teacher_model_name_or_path",
              qa_model_dir, "--layers_to_keep", "1"]
    single = tmp_path / "single"
    run_qa.main(qa_args(qa_model_dir, squad_files, single, *common))
    double = tmp_path / "double"
    argv = qa_args(qa_model_dir, squad_files, double, *common, "--per_device_train_batch_size", "4")
    at = argv.index("--use_cpu")
    del argv[at:at + 2]  # the plain command a user types
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
                           os.path.join(REPO, "run_qa.py"), *argv], capture_output=True, text=True, timeout=600,
                          env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stderr[-3000:]
    one, two = _json(single / "trainer_state.json"), _json(double / "trainer_state.json")
    assert two["global_step"] == one["global_step"] == 30
    assert (_json(double / "sparsity_report.json")["targeted_sparsity"]
            == pytest.approx(_json(single / "sparsity_report.json")["targeted_sparsity"], abs=1e-9))
    assert (done.stdout + done.stderr).count("Sparsity after training") == 1  # rank 0 alone reports
    assert _json(double / "config.json")["num_hidden_layers"] == 1
    assert any("distill_loss" in h for h in two["log_history"])


def _free_port():
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _on_two_nodes(argv):
    """torchrun as on two machines of one process each (both on this one, rendezvous on a local port); the
    return status of each node."""
    port = _free_port()
    argv = list(argv)
    at = argv.index("--use_cpu")
    del argv[at:at + 2]
    nodes = [subprocess.Popen([sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", str(rank),
                               "--nproc_per_node", "1", "--master_addr", "127.0.0.1", "--master_port", str(port),
                               os.path.join(REPO, "run_qa.py"), *argv], stdout=subprocess.PIPE,
                              stderr=subprocess.STDOUT, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
             for rank in (0, 1)]
    outputs = [node.communicate(timeout=600)[0] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], outputs[0][-3000:] + outputs[1][-3000:]
    return outputs


def test_two_nodes_train_and_evaluate_as_one_process(qa_model_dir, squad_files, tmp_path):
    """torchrun --nnodes 2 (one process per node) with batch 4 each: the optimizer steps and sparsity of one
    process with batch 8; and evaluation split over the nodes gives exactly the one-process metrics (each
    question's windows gathered back together, none counted twice)."""
    common = ["--do_train", "--nm_prune_config", GMP, "--logging_steps", "1"]
    single = tmp_path / "single"
    run_qa.main(qa_args(qa_model_dir, squad_files, single, *common, "--do_eval"))
    nodes = tmp_path / "nodes"
    outputs = _on_two_nodes(qa_args(qa_model_dir, squad_files, nodes, *common, "--per_device_train_batch_size", "4"))
    assert _json(nodes / "trainer_state.json")["global_step"] == _json(single / "trainer_state.json")["global_step"]
    assert (_json(nodes / "sparsity_report.json")["targeted_sparsity"]
            == pytest.approx(_json(single / "sparsity_report.json")["targeted_sparsity"], abs=1e-9))
    assert sum(output.count("Sparsity after training") for output in outputs) == 1  # global rank 0 alone

    _on_two_nodes(qa_args(str(single), squad_files, tmp_path / "eval", "--do_eval", "--per_device_eval_batch_size",
                          "3"))
    split, whole = _json(tmp_path / "eval" / "eval_results.json"), _json(single / "eval_results.json")
    for key in ("eval_exact_match", "eval_f1", "eval_samples"):
        assert split[key] == pytest.approx(whole[key], abs=1e-9), key
    assert _json(tmp_path / "eval" / "eval_predictions.json") == _json(single / "eval_predictions.json")


def test_last_takes_the_newest_of_several_complete_checkpoints(tmp_path):
    from sparsebert.pipeline import last_complete_checkpoint

    for step in (10, 20, 100):  # by step number, not by name: "checkpoint-100" sorts before "checkpoint-20"
        (tmp_path / f"checkpoint-{step}").mkdir()
        (tmp_path / f"checkpoint-{step}" / "trainer_state.json").write_text("{}")
    assert last_complete_checkpoint(str(tmp_path)) == str(tmp_path / "checkpoint-100")
