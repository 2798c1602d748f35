"""run_glue.py: metrics, the three data sources, bad input, and tiny end-to-end runs."""

import gzip
import json
import logging
import os
import random

import pytest
from datasets import Dataset, DatasetDict

import run_glue
import sparsebert.glue as glue
from conftest import RECIPES
from helpers import listing
from sparsebert.cli import as_flags
from sparsebert.errors import UsageError
from sparsebert.demo import COLORS, NAMES, OBJECTS, make_bert, make_tokenizer
from sparsebert.metrics import binary_f1, glue_metrics, matthews_correlation, pearson, spearman


# ---- metrics on hand-made predictions ----------------------------------------------------------

def test_accuracy_and_f1_for_mrpc_qqp():
    predictions, labels = [1, 1, 0, 0, 1], [1, 0, 0, 1, 1]
    # tp 2, fp 1, fn 1: precision 2/3, recall 2/3
    assert glue_metrics("f1_accuracy", predictions, labels) == pytest.approx({"accuracy": 0.6, "f1": 2 / 3})
    assert binary_f1([0, 0], [1, 0]) == 0.0


def test_matthews_correlation_for_cola():
    # tp 2, tn 1, fp 1, fn 0: (2*1 - 1*0) / sqrt(3 * 2 * 2 * 1)
    assert matthews_correlation([1, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(2 / 12 ** 0.5)
    assert matthews_correlation([1, 1, 1], [1, 0, 1]) == 0.0  # a constant predictor carries no signal
    assert glue_metrics("matthews", [0, 1], [0, 1]) == {"matthews_correlation": pytest.approx(1.0)}


def test_pearson_and_spearman_for_stsb():
    scores, gold = [1.0, 2.0, 3.0, 10.0], [0.5, 1.0, 1.5, 2.0]
    assert spearman(scores, gold) == pytest.approx(1.0)  # same order
    assert pearson(scores, gold) < 0.95  # but not linear
    assert pearson([1, 2, 3], [2, 4, 6]) == pytest.approx(1.0)
    assert spearman([1, 2, 2, 3], [1, 2, 3, 4]) == pytest.approx(0.9486833, abs=1e-6)  # ties share a rank


def test_accuracy_for_the_other_tasks():
    assert glue_metrics("accuracy", [0, 2, 1, 1], [0, 2, 2, 1]) == {"accuracy": 0.75}


def test_task_names_are_case_insensitive_and_unknown_ones_listed():
    assert glue.get_task("MNLI")[0] == "mnli" and glue.get_task("SST-2")[0] == "sst2"
    with pytest.raises(UsageError, match="`task_name` squad: unknown GLUE task; choose one of cola, sst2, mrpc"):
        glue.get_task("squad")


# ---- data sources ------------------------------------------------------------------------------

class Args:
    def __init__(self, **kwargs):
        self.dataset_name, self.glue_data_dir, self.train_file = "glue", None, None
        self.validation_file = self.validation_mismatched_file = None
        self.__dict__.update(kwargs)


def _load(task_name, **kwargs):
    key, task = glue.get_task(task_name)
    return glue.load_glue_datasets(key, task, Args(**kwargs))


def test_original_tsv_folders_with_their_quirks(tmp_path):
    cola = tmp_path / "CoLA"
    cola.mkdir()
    (cola / "train.tsv").write_text("gj04\t1\t\tThe boy ran .\ngj04\t0\t*\tRan boy the .\n")
    (cola / "dev.tsv").write_text("gj04\t1\t\tShe sang .\n")
    data = _load("cola", glue_data_dir=str(cola))
    assert data["train"]["sentence"] == ["The boy ran .", "Ran boy the ."] and data["train"]["label"] == [1, 0]

    mrpc = tmp_path / "MRPC"
    mrpc.mkdir()
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (mrpc / "train.tsv").write_text(header + '1\t1\t2\tHe said " hi .\tHe said hi .\n', encoding="utf-8")
    (mrpc / "dev.tsv").write_text(header + "0\t3\t4\tA b .\tC d .\n", encoding="utf-8")
    data = _load("mrpc", glue_data_dir=str(mrpc))
    assert data["train"][0] == {"sentence1": 'He said " hi .', "sentence2": "He said hi .", "label": 1}

    mnli = tmp_path / "MNLI"
    mnli.mkdir()
    header = "index\tpromptID\tpairID\tgenre\tsentence1\tsentence2\tlabel1\tgold_label\n"
    (mnli / "train.tsv").write_text(header + "0\t1\t1\tx\tA dog runs .\tAn animal moves .\tentailment\tentailment\n")
    (mnli / "dev_matched.tsv").write_text(header + "0\t1\t1\tx\tIt is red .\tIt is blue .\tcontradiction\tcontradiction\n")
    (mnli / "dev_mismatched.tsv").write_text(header + "0\t1\t1\tx\tHe sat .\tHe is tall .\tneutral\tneutral\n")
    data = _load("MNLI", glue_data_dir=str(mnli))
    assert set(data) == {"train", "validation_matched", "validation_mismatched"}
    assert data["validation_matched"]["label"] == [2] and data["validation_mismatched"]["label"] == [1]
    assert data["train"][0]["premise"] == "A dog runs ."


def test_csv_json_and_gzipped_json_lines_files(tmp_path):
    (tmp_path / "train.csv").write_text('sentence1,sentence2,label\n"A, b",C,entailment\nD,E,1\n')
    rows = [{"sentence1": "F", "sentence2": "G", "label": 0, "idx": 0}]
    with gzip.open(tmp_path / "dev.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    data = _load("rte", train_file=str(tmp_path / "train.csv"), validation_file=str(tmp_path / "dev.jsonl.gz"))
    assert data["train"]["sentence1"] == ["A, b", "D"] and data["train"]["label"] == [0, 1]
    assert data["validation"][0] == {"sentence1": "F", "sentence2": "G", "label": 0}
    (tmp_path / "stsb.json").write_text(json.dumps({"data": [{"sentence1": "a", "sentence2": "b", "label": "3.8"}]}))
    data = _load("stsb", train_file=str(tmp_path / "stsb.json"), validation_file=str(tmp_path / "stsb.json"))
    assert data["train"]["label"] == [pytest.approx(3.8)]


def test_hub_is_used_when_no_files_are_given(monkeypatch):
    calls = []

    def fake_load_dataset(name, config, cache_dir=None):
        calls.append((name, config))
        split = Dataset.from_dict({"sentence": ["fine .", "awful ."], "label": [1, 0], "idx": [0, 1]})
        return DatasetDict({"train": split, "validation": split, "test": split})

    monkeypatch.setattr(glue, "load_dataset", fake_load_dataset)
    data = _load("sst2")
    assert calls == [("glue", "sst2")] and set(data) == {"train", "validation"}
    assert data["validation"].column_names == ["sentence", "label"]


def test_unreachable_hub_dataset_is_named(monkeypatch):
    def offline(*args, **kwargs):  # what datasets raises without a network
        raise ConnectionError("Couldn't reach 'glue' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(glue, "load_dataset", offline)
    with pytest.raises(UsageError, match=r"^`dataset_name` glue/sst2: cannot load it \(Couldn't reach 'glue' on the "
                                         r"Hub \(LocalEntryNotFoundError\)\); without the Hub, give `train_file` "
                                         r"and `validation_file` \(or `glue_data_dir`\)$"):
        _load("sst2")


def test_bad_glue_data_is_refused(tmp_path):
    (tmp_path / "nolabel.jsonl").write_text(json.dumps({"sentence": "a"}) + "\n")
    with pytest.raises(UsageError, match=r"`train_file` .*nolabel.jsonl: missing the column\(s\) label"):
        _load("sst2", train_file=str(tmp_path / "nolabel.jsonl"), validation_file=str(tmp_path / "nolabel.jsonl"))
    (tmp_path / "badlabel.jsonl").write_text(json.dumps({"sentence": "a", "label": 1}) + "\n"
                                             + json.dumps({"sentence": "b", "label": 2}) + "\n")
    with pytest.raises(UsageError, match=r"badlabel.jsonl: row 2 has label 2, outside the task's labels "
                                         r"\(0 or negative, 1 or positive\)"):
        _load("sst2", train_file=str(tmp_path / "badlabel.jsonl"), validation_file=str(tmp_path / "badlabel.jsonl"))
    with pytest.raises(UsageError, match="`validation_file` is required for task mnli"):
        _load("mnli", train_file=str(tmp_path / "badlabel.jsonl"))


# ---- end to end ----------------------------------------------------------------------------------

def _sentences(count, seed, task):
    """Learnable toy data: "the lamp is red ." is positive when the colour is in the first half of the list."""
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        obj, color, name = rng.choice(OBJECTS), rng.choice(COLORS), rng.choice(NAMES)
        positive = COLORS.index(color) < len(COLORS) // 2
        if task == "sst2":
            rows.append({"sentence": f"the {obj} is {color} .", "label": int(positive)})
        elif task == "stsb":
            rows.append({"sentence1": f"the {obj} is {color} .", "sentence2": f"{name} lives in oslo .",
                         "label": 5.0 * COLORS.index(color) / (len(COLORS) - 1)})
        else:  # mnli
            rows.append({"premise": f"the {obj} is {color} .", "hypothesis": f"{name} lives in oslo .",
                         "label": rng.choice(["entailment", "neutral", "contradiction"])})
    return rows


def _files(tmp_path, task, train=96, dev=24):
    paths = {}
    for split, count, seed in (("train", train, 1), ("dev", dev, 2), ("dev_mm", dev, 3)):
        paths[split] = str(tmp_path / f"{task}-{split}.jsonl")
        with open(paths[split], "w") as handle:
            handle.writelines(json.dumps(r) + "\n" for r in _sentences(count, seed, task))
    return paths


def _model_dir(tmp_path, name, num_labels, seed=0):
    folder = tmp_path / name
    make_bert(num_labels=num_labels, hidden_size=32, seed=seed).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


def _glue_args(model_dir, files, output_dir, task, *extra):
    return ["--student_model_name_or_path", model_dir, "--task_name", task, "--train_file", files["train"],
            "--validation_file", files["dev"], "--output_dir", str(output_dir), "--max_seq_length", "32",
            "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none",
            "--disable_tqdm", "true", "--save_strategy", "no", "--use_cpu", "true", "--seed", "3", *extra]


def _json(path):
    with open(path) as handle:
        return json.load(handle)


def test_classification_with_teacher_pruning_and_export(tmp_path):
    files = _files(tmp_path, "sst2")
    teacher = _model_dir(tmp_path, "teacher", 2, seed=9)
    teacher_files = listing(teacher)
    output_dir = tmp_path / "out"
    run_glue.main(_glue_args(_model_dir(tmp_path, "student", 2), files, output_dir, "SST2", "--do_train",
                             "--do_eval", "--do_onnx_export", "--teacher_model_name_or_path", teacher,
                             "--nm_prune_config", os.path.join(RECIPES, "90sparsity2epoch.yaml"),
                             "--logging_steps", "4"))
    assert listing(teacher) == teacher_files
    results = _json(output_dir / "eval_results.json")
    assert results["eval_samples"] == 24  # (the accuracy is checked against the predictions file below)
    assert _json(output_dir / "sparsity_report.json")["targeted_sparsity"] == pytest.approx(0.90, abs=0.005)
    parity = _json(output_dir / "onnx_parity.json")
    assert parity["parity_ok"]
    history = _json(output_dir / "trainer_state.json")["log_history"]
    # hardness 1.0 (the default): the loss trained on is the teacher's term alone, not the student's own loss
    mixed = [h for h in history if "distill_loss" in h]
    assert mixed and all(h["loss"] == pytest.approx(h["distill_loss"], abs=2e-4) for h in mixed)
    assert all(abs(h["distill_loss"] - h["student_loss"]) > 1e-3 for h in mixed)

    # the per-example evaluation file holds what the accuracy was computed from
    rows = [line.rstrip("\n").split("\t") for line in open(output_dir / "eval_predictions_sst2.txt")]
    assert rows[0] == ["index", "prediction", "label"] and len(rows) == 25
    assert {r[1] for r in rows[1:]} <= {"negative", "positive"}
    assert sum(r[1] == r[2] for r in rows[1:]) / 24 == pytest.approx(results["eval_accuracy"])

    # --do_predict on unlabeled rows: the same predictions as for those rows in evaluation
    unlabeled = tmp_path / "test.jsonl"
    unlabeled.write_text("".join(json.dumps({"sentence": json.loads(line)["sentence"]}) + "\n"
                                 for line in open(files["dev"])))
    run_glue.main(_glue_args(str(output_dir), files, tmp_path / "predict", "SST2", "--do_predict", "--test_file",
                             str(unlabeled)))
    predicted = [line.rstrip("\n").split("\t") for line in open(tmp_path / "predict" / "predict_results_sst2.txt")]
    assert predicted[0] == ["index", "prediction"]
    assert [r[1] for r in predicted[1:]] == [r[1] for r in rows[1:]]


def test_do_predict_needs_a_test_file(tmp_path):
    with pytest.raises(UsageError, match=r"^--do_predict needs --test_file"):
        run_glue.main(_glue_args(_model_dir(tmp_path, "m", 2), _files(tmp_path, "sst2"), tmp_path / "out", "sst2",
                                 "--do_predict"))
    assert not (tmp_path / "out").exists()


def test_stsb_regression_reports_correlations(tmp_path):
    files = _files(tmp_path, "stsb", train=480)
    output_dir = tmp_path / "out"
    run_glue.main(_glue_args(_model_dir(tmp_path, "student", 1), files, output_dir, "stsb", "--do_train",
                             "--do_eval", "--num_train_epochs", "8", "--learning_rate", "2e-3"))
    config = _json(output_dir / "config.json")
    assert config["num_labels"] == 1 if "num_labels" in config else len(config["id2label"]) == 1
    assert config["problem_type"] == "regression"
    results = _json(output_dir / "eval_results.json")
    assert {"eval_pearson", "eval_spearmanr"} <= set(results)
    assert results["eval_pearson"] > 0.5  # the colour decides the score: a trained regressor finds it


def test_mnli_reports_matched_and_mismatched(tmp_path):
    files = _files(tmp_path, "mnli")
    output_dir = tmp_path / "out"
    run_glue.main(_glue_args(_model_dir(tmp_path, "student", 3), files, output_dir, "MNLI", "--do_train",
                             "--do_eval", "--validation_mismatched_file", files["dev_mm"], "--nm_prune_config",
                             os.path.join(RECIPES, "80sparsity1shot.yaml"), "--do_onnx_export", "--layers_to_keep", "1"))
    assert _json(output_dir / "config.json")["num_hidden_layers"] == 1
    results = _json(output_dir / "eval_results.json")
    assert {"eval_accuracy", "eval_mm_accuracy", "eval_samples", "eval_mm_samples"} <= set(results)
    assert _json(output_dir / "onnx_parity.json")["parity_ok"]


def test_mnli_evaluates_on_the_matched_file_alone_when_no_mismatched_one_is_given(tmp_path, caplog):
    files = _files(tmp_path, "mnli")
    output_dir = tmp_path / "out"
    with caplog.at_level(logging.WARNING):
        run_glue.main(_glue_args(_model_dir(tmp_path, "student", 3), files, output_dir, "MNLI", "--do_eval"))
    assert "no --validation_mismatched_file: evaluating on the matched dev set alone" in as_flags(caplog.text)
    results = _json(output_dir / "eval_results.json")
    assert "eval_accuracy" in results and not any(key.startswith("eval_mm") for key in results)


# sparseml's classic QuantizationModifier as older published recipes use it: every Linear's and LayerNorm's output
# quantized too, and the pooler's Tanh
CLASSIC_QAT = """
version: 1.1.0
modifiers:
  - !EpochRangeModifier
    start_epoch: 0.0
    end_epoch: 1.0
  - !QuantizationModifier
    start_epoch: 0.0
    weight_bits: 8
    activation_bits: 8
"""


@pytest.mark.parametrize("recipe", ["qat1epoch.yaml", "classic"])
def test_int8_classifier_with_a_pooler_reloads_for_evaluation_and_exports_what_it_computes(tmp_path, recipe):
    """An INT8 sequence classifier (its pooler and head quantized too) reloads for evaluation and exports to an
    integer graph that computes what the model does. With the classic settings, its pooler's Tanh gets a
    fixed-range fake-quantizer whose buffers are not saved (reload must rebuild it rather than refuse the file), and
    the pooler and the classifier come out of sparseml's conversion as QLinearMatMul, their output quantized before
    the bias is added where training quantized after (rewritten)."""
    if recipe == "classic":
        recipe_path = tmp_path / "classic.yaml"
        recipe_path.write_text(CLASSIC_QAT)
    else:
        recipe_path = os.path.join(RECIPES, recipe)
    files = _files(tmp_path, "sst2", dev=100)
    output_dir = tmp_path / "int8"
    run_glue.main(_glue_args(_model_dir(tmp_path, "student", 2), files, output_dir, "SST2", "--do_train",
                             "--do_eval", "--do_onnx_export", "--nm_prune_config", str(recipe_path),
                             "--recipe_args", '{"init_lr": 1e-3}' if recipe != "classic" else "{}"))
    parity = _json(output_dir / "onnx_parity.json")
    assert parity["verify_shape"][0] == 100 and parity["prediction_agreement"] == 1.0
    assert parity["integer_ops"] == {"MatMulInteger": 2 * 6 + 2 + 2 * 2}, parity  # no QLinearMatMul left
    assert parity["mean_abs_diff"] <= 1e-3 * parity["largest_abs_output"], parity
    rewritten = parity["int8_graph_rewrites"]["qlinear_matmuls_with_bias_rewritten"]
    assert rewritten == (2 if recipe == "classic" else 0)
    trained = _json(output_dir / "eval_results.json")
    run_glue.main(_glue_args(str(output_dir), files, tmp_path / "reloaded", "SST2", "--do_eval"))
    reloaded = _json(tmp_path / "reloaded" / "eval_results.json")
    assert reloaded["eval_accuracy"] == trained["eval_accuracy"]
    assert reloaded["eval_loss"] == pytest.approx(trained["eval_loss"], abs=1e-6)
