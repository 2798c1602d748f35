"""run_qa.py end to end on the tiny model: prune, evaluate, save, export, reload."""

import json
import logging
import os

import pytest

import run_qa
from conftest import RECIPES
from helpers import qa_args
from sparsebert.cli import as_flags
from sparsebert.demo import make_qa_examples


@pytest.fixture(scope="module")
def trained(qa_model_dir, squad_files, tmp_path_factory):
    output_dir = tmp_path_factory.mktemp("run") / "out"
    run_qa.main(qa_args(qa_model_dir, squad_files, output_dir, "--do_train", "--do_eval", "--do_onnx_export",
                        "--nm_prune_config", os.path.join(RECIPES, "80sparsity2epoch.yaml"),
                        "--num_train_epochs", "5", "--logging_steps", "5", "--report_to", "tensorboard"))
    return output_dir


def _json(path):
    with open(path) as handle:
        return json.load(handle)


def test_outputs_the_hf_way(trained):
    for name in ("model.safetensors", "config.json", "tokenizer.json", "recipe.yaml", "sparsity_report.json",
                 "eval_results.json", "all_results.json", "eval_predictions.json", "model.onnx", "onnx_parity.json"):
        assert (trained / name).is_file(), name
    assert not os.path.exists("sparse_logs")  # sparseml's default loggers would write there
    assert (trained / "recipe.yaml").read_text() == open(os.path.join(RECIPES, "80sparsity2epoch.yaml")).read()
    results = _json(trained / "eval_results.json")
    assert 0 <= results["eval_exact_match"] <= results["eval_f1"] <= 100
    assert results["epoch"] == pytest.approx(2.0)  # the recipe's 2 epochs won over --num_train_epochs 5
    predictions = _json(trained / "eval_predictions.json")
    assert len(predictions) == 30 and all(isinstance(v, str) for v in predictions.values())


def test_sparsity_report_and_training_log(trained):
    report = _json(trained / "sparsity_report.json")
    targeted = [row for row in report["parameters"] if row["targeted"]]
    assert len(targeted) == 12  # 6 matrices x 2 layers
    assert report["targeted_sparsity"] == pytest.approx(0.80, abs=0.005)
    assert all(row["sparsity"] < 0.05 for row in report["parameters"] if not row["targeted"])
    history = _json(trained / "trainer_state.json")["log_history"]
    logged = [entry["sparsity"] for entry in history if "sparsity" in entry]
    assert logged[0] < logged[-1] == pytest.approx(0.80, abs=0.005)  # the schedule is visible to the loggers


def test_tensorboard_shows_the_pruning_schedule(trained):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    curve = []
    for root, _, files in os.walk(trained / "runs"):
        for name in files:
            accumulator = EventAccumulator(os.path.join(root, name))
            accumulator.Reload()
            if "train/sparsity" in accumulator.Tags()["scalars"]:
                curve += [event.value for event in accumulator.Scalars("train/sparsity")]
    assert curve == sorted(curve) and curve[0] < 0.8 and curve[-1] == pytest.approx(0.8, abs=0.005)


def test_onnx_export_verified(trained):
    parity = _json(trained / "onnx_parity.json")
    assert parity["parity_ok"] and parity["max_abs_diff"] < 1e-4
    assert parity["verify_shape"] != parity["export_shape"]


def test_reloaded_model_evaluates_the_same(trained, squad_files, tmp_path):
    run_qa.main(["--model_name_or_path", str(trained), "--validation_file", squad_files["dev_jsonl"], "--do_eval",
                 "--output_dir", str(tmp_path), "--max_seq_length", "64", "--doc_stride", "16",
                 "--max_query_length", "16", "--report_to", "none", "--use_cpu", "true"])
    before, after = _json(trained / "eval_results.json"), _json(tmp_path / "eval_results.json")
    assert after["eval_f1"] == pytest.approx(before["eval_f1"], abs=1e-9)
    assert after["eval_exact_match"] == pytest.approx(before["eval_exact_match"], abs=1e-9)
    assert _json(tmp_path / "eval_predictions.json") == _json(trained / "eval_predictions.json")


def test_the_model_learns_the_demo_task(qa_model_dir, tmp_path):
    """A dense run on more demo data beats guessing by far: the pipeline trains, not just runs."""
    files = {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "dev.jsonl")}
    for path, rows in ((files["train"], make_qa_examples(400, seed=3)), (files["dev"], make_qa_examples(40, seed=4))):
        with open(path, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    run_qa.main(qa_args(qa_model_dir, files, tmp_path / "out", "--do_train", "--do_eval", "--num_train_epochs", "12",
                        "--learning_rate", "1e-3", "--per_device_train_batch_size", "8"))
    assert _json(tmp_path / "out" / "eval_results.json")["eval_f1"] > 50


def test_squad_v2_with_unanswerable_questions(qa_model_dir, tmp_path):
    rows = make_qa_examples(40, seed=5)
    for row in rows[::3]:  # a third become unanswerable: asked about someone the context never mentions
        row["question"] = "where does nobody live ?"
        row["answers"] = {"text": [], "answer_start": []}
    files = {"train": str(tmp_path / "train.jsonl"), "dev": str(tmp_path / "dev.jsonl")}
    for path in files.values():
        with open(path, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    run_qa.main(qa_args(qa_model_dir, files, tmp_path / "out", "--do_train", "--do_eval", "--version_2_with_negative",
                        "--num_train_epochs", "2"))
    results = _json(tmp_path / "out" / "eval_results.json")
    assert {"eval_exact_match", "eval_f1", "eval_HasAns_exact", "eval_NoAns_exact", "eval_best_f1",
            "eval_best_f1_thresh"} <= set(results)
    assert results["eval_HasAns_total"] + results["eval_NoAns_total"] == len(rows)
    null_odds = _json(tmp_path / "out" / "eval_null_odds.json")
    predictions = _json(tmp_path / "out" / "eval_predictions.json")
    assert set(null_odds) == set(predictions)
    # with the default threshold 0, a question gets "" exactly when its null score beats the best span
    assert all((predictions[q] == "") == (null_odds[q] > 0.0) for q in predictions)


def test_a_json_argument_file_works_like_flags(trained, squad_files, tmp_path):
    arguments = {"model_name_or_path": str(trained), "validation_file": squad_files["dev"], "do_eval": True,
                 "output_dir": str(tmp_path / "out"), "max_seq_length": 64, "doc_stride": 16, "max_query_length": 16,
                 "report_to": "none", "use_cpu": True}
    (tmp_path / "args.json").write_text(json.dumps(arguments))
    run_qa.main([str(tmp_path / "args.json")])
    assert _json(tmp_path / "out" / "eval_results.json")["eval_f1"] == pytest.approx(
        _json(trained / "eval_results.json")["eval_f1"], abs=1e-9)


def test_a_short_run_shows_its_schedule_and_only_the_flags_given(qa_model_dir, squad_files, tmp_path, caplog):
    """Without --logging_steps every run logs its loss and sparsity about 50 times (each step of a short one);
    the epochs message names --num_train_epochs only when the user gave it."""
    recipe = os.path.join(RECIPES, "80sparsity2epoch.yaml")
    with caplog.at_level(logging.INFO):
        run_qa.main(qa_args(qa_model_dir, squad_files, tmp_path / "a", "--do_train", "--nm_prune_config", recipe))
    state = _json(tmp_path / "a" / "trainer_state.json")
    assert state["global_step"] < 50
    assert [h["step"] for h in state["log_history"] if "sparsity" in h] == list(range(1, state["global_step"] + 1))
    assert "Training for 2 epochs, as the recipe" in caplog.text and "num_train_epochs" not in caplog.text
    caplog.clear()
    with caplog.at_level(logging.INFO):
        run_qa.main(qa_args(qa_model_dir, squad_files, tmp_path / "b", "--do_train", "--nm_prune_config", recipe,
                            "--num_train_epochs", "3", "--logging_steps", "4"))
    assert "not --num_train_epochs 3" in as_flags(caplog.text)  # as the command line shows it
    state = _json(tmp_path / "b" / "trainer_state.json")
    assert [h["step"] for h in state["log_history"] if "sparsity" in h] == list(range(4, state["global_step"] + 1, 4))


def test_the_epochs_message_of_arguments_built_in_code_names_only_what_was_set(tmp_path, caplog):
    # an own script's TrainingArguments have no command line: no flag is named, a value set in code is
    from transformers import TrainingArguments

    from sparsebert.recipe import apply_recipe_epochs, load_recipe

    recipe = os.path.join(RECIPES, "80sparsity2epoch.yaml")
    for epochs, expected in ((None, "Training for 2 epochs, as the recipe"),
                             (5.0, "not the num_train_epochs=5 of the TrainingArguments")):
        caplog.clear()
        args = TrainingArguments(output_dir=str(tmp_path), **({"num_train_epochs": epochs} if epochs else {}))
        with caplog.at_level(logging.INFO):
            apply_recipe_epochs(load_recipe(recipe), args, recipe)
        assert expected in caplog.text and "`num_train_epochs`" not in caplog.text
        assert args.num_train_epochs == 2


def test_do_predict_answers_unlabeled_questions(trained, squad_files, tmp_path):
    """Questions without answers (--test_file) get the answers evaluation gives the same questions."""
    rows = [json.loads(line) for line in open(squad_files["dev_jsonl"])]
    test_file = tmp_path / "questions.jsonl"
    test_file.write_text("".join(json.dumps({k: row[k] for k in ("id", "context", "question")}) + "\n"
                                 for row in rows))
    run_qa.main(qa_args(str(trained), {**squad_files, "dev": squad_files["dev_jsonl"]}, tmp_path / "out",
                        "--do_eval", "--do_predict", "--test_file", str(test_file)))
    answers = _json(tmp_path / "out" / "predict_predictions.json")
    assert set(answers) == {row["id"] for row in rows}
    assert answers == _json(tmp_path / "out" / "eval_predictions.json")
