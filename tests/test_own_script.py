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


def _library_trainer(tmp_path, recipe, output_dir, save_steps=None):
    """SparseMLTrainer as one's own script builds it: TrainingArguments in code, a recipe file, no flags."""
    import torch
    from transformers import TrainingArguments

    from helpers import random_qa_dataset
    from sparsebert import SparseMLTrainer

    torch.manual_seed(0)
    args = TrainingArguments(output_dir=str(output_dir), per_device_train_batch_size=8, learning_rate=1e-3,
                             report_to="none", disable_tqdm=True, use_cpu=True, seed=0, logging_steps=1,
                             save_strategy="steps" if save_steps else "no", save_steps=save_steps or 500)
    return SparseMLTrainer(model=make_bert(hidden_size=32), args=args, train_dataset=random_qa_dataset(48),
                           recipe=recipe)


QAT = """modifiers:
  - !EpochRangeModifier
    start_epoch: 0
    end_epoch: 2
  - !GMPruningModifier
    params: ["re:.*layer.\\\\d+.(intermediate|output).dense.weight"]
    init_sparsity: 0.2
    final_sparsity: 0.6
    start_epoch: 0
    end_epoch: 1.5
    update_frequency: 0.25
  - !QuantizationModifier
    start_epoch: 1.0
    submodules: [bert.embeddings, bert.encoder, qa_outputs]
"""


def test_a_library_users_quantized_model_reloads_quantized_from_save_model(tmp_path):
    # save_model writes the recipe beside the model, so the quantized structure is rebuilt on reload
    import torch
    from transformers import AutoConfig, AutoModelForQuestionAnswering

    from sparsebert.arguments import ModelArguments
    from sparsebert.onnx_export import make_batch
    from sparsebert.pipeline import load_model
    from sparsebert.quantization import is_quantized

    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT)
    trainer = _library_trainer(tmp_path, str(recipe), tmp_path / "out")
    trainer.train()
    trainer.save_model()
    saved = tmp_path / "out"
    assert (saved / "recipe.yaml").read_text() == QAT
    reloaded = load_model(ModelArguments(model_name_or_path=str(saved)), AutoModelForQuestionAnswering,
                          AutoConfig.from_pretrained(saved)).eval()
    assert is_quantized(reloaded)
    batch = make_batch(make_tokenizer(), batch_size=4, seq_len=16, seed=3)
    with torch.no_grad():
        expected, got = trainer.model.eval()(**batch), reloaded(**batch)
    assert torch.equal(expected.start_logits, got.start_logits) and torch.equal(expected.end_logits, got.end_logits)


def test_resuming_through_train_alone_continues_the_recipe_where_the_checkpoint_stopped(tmp_path):
    # one's own script passes the checkpoint to train() only: the recipe starts at the checkpoint's epoch (QAT in
    # place before its weights load, pruning at its scheduled sparsity), and the run ends as the unbroken one did
    import torch

    recipe = tmp_path / "qat.yaml"
    recipe.write_text(QAT)
    whole = _library_trainer(tmp_path, str(recipe), tmp_path / "whole", save_steps=9)
    whole.train()
    steps = whole.state.global_step
    sparsity = {h["step"]: h["sparsity"] for h in whole.state.log_history if "sparsity" in h}
    resumed = _library_trainer(tmp_path, str(recipe), tmp_path / "whole")  # no resume in its arguments
    resumed.train(resume_from_checkpoint=str(tmp_path / "whole" / "checkpoint-9"))  # epoch 1.5: QAT has begun
    assert resumed.state.global_step == steps
    after = {h["step"]: h["sparsity"] for h in resumed.state.log_history if "sparsity" in h and h["step"] > 9}
    assert after and all(value == sparsity[step] for step, value in after.items())
    for mine, theirs in zip(resumed.model.state_dict().values(), whole.model.state_dict().values()):
        assert torch.allclose(mine.float(), theirs.float(), atol=1e-5)
