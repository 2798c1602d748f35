"""Sparsifying from one's own Hugging Face script: the token-classification example, end to end on tiny data."""

import json
import os
import sys

import pytest

from conftest import RECIPES, REPO
from sparsebert.demo import make_bert, make_ner_examples, make_tokenizer

sys.path.insert(0, os.path.join(REPO, "examples"))
import token_classification  # noqa: E402


def test_the_token_classification_example_prunes_and_exports(tmp_path):
    model_dir = tmp_path / "model"
    make_bert(hidden_size=32).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    files = {}
    for split, count, seed in (("train", 256, 1), ("dev", 24, 2)):
        files[split] = tmp_path / f"{split}.jsonl"
        files[split].write_text("".join(json.dumps(row) + "\n" for row in make_ner_examples(count, seed)))
    output_dir = tmp_path / "out"
    metrics, sparsity, report = token_classification.main([
        "--model_name_or_path", str(model_dir), "--train_file", str(files["train"]),
        "--validation_file", str(files["dev"]), "--recipe", os.path.join(RECIPES, "80sparsity2epoch.yaml"),
        "--output_dir", str(output_dir), "--per_device_train_batch_size", "8", "--learning_rate", "3e-3",
        "--report_to", "none", "--use_cpu", "true", "--save_strategy", "no", "--seed", "0"])
    # the recipe's six matrices per layer, and only they, at the recipe's sparsity
    assert sparsity["targeted_sparsity"] == pytest.approx(0.8, abs=0.005)
    pruned = sorted(row["name"].split(".", 4)[-1] for row in sparsity["parameters"] if row["targeted"])
    assert pruned == sorted(["attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
                             "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight"] * 2)
    tags = [tag for row in make_ner_examples(24, 2) for tag in row["tags"]]
    assert tags.count("O") / len(tags) < 0.75 < 0.95 < metrics["eval_accuracy"]  # far above tagging all "O"
    assert report["parity_ok"] and report["prediction_agreement"] == 1.0
    assert {"model.safetensors", "config.json", "model.onnx", "tokenizer.json"} <= set(os.listdir(output_dir))
