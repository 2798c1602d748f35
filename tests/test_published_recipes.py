"""Recipes shaped like sparseml's published BERT recipes (oBERT, sparse transfer, the integration's Markdown
recipes), run unchanged through the scripts on tiny models."""

import json
import os
import shutil
import textwrap

import onnx
import pytest
import torch
from onnx import numpy_helper
from transformers import AutoModelForQuestionAnswering

import run_glue
import run_qa
from conftest import RECIPES
from helpers import qa_args
from sparsebert.demo import make_bert, make_tokenizer
from test_glue import _files, _glue_args, _model_dir

SHORT_OBS = ["--recipe_args", '{"num_grads": 16, "grad_batch_size": 4}']  # the tiny runs need few gradients


def _json(path):
    with open(path) as handle:
        return json.load(handle)


def _f1(output_dir):
    return _json(output_dir / "eval_results.json")["eval_f1"]


def _training_logs(output_dir):
    return [h for h in _json(output_dir / "trainer_state.json")["log_history"] if "loss" in h]


def test_obert_recipe_runs_through_run_qa(qa_model_dir, squad_files, tmp_path):
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(qa_model_dir, squad_files, output_dir, "--do_train", "--do_eval", "--logging_steps", "1",
                        "--recipe", os.path.join(RECIPES, "obert80_squad.yaml"), *SHORT_OBS,
                        "--distill_teacher", qa_model_dir))
    report = _json(output_dir / "sparsity_report.json")
    assert report["targeted_sparsity"] == pytest.approx(0.80, abs=0.001)  # global: over all matrices together
    per_matrix = [r["sparsity"] for r in report["parameters"] if r["targeted"]]
    assert len(per_matrix) == 12 and max(per_matrix) - min(per_matrix) > 0.02
    logs = _training_logs(output_dir)
    assert len(logs) == 45  # 15 steps an epoch, the recipe's 3 epochs
    lrs = [h["learning_rate"] for h in logs]
    assert lrs[0] == pytest.approx(8e-5)  # the recipe's init_lr, not --learning_rate 5e-4
    restarts = [i for i in range(1, len(lrs)) if lrs[i] > lrs[i - 1]]
    # epoch 1 (the cyclic schedule starts), then at the first step of each new half-epoch cycle (7.5 steps)
    assert restarts == [15, 23, 30, 38]
    # the recipe's distillation is in the loss: the total is the teacher's term, not the student's own loss
    assert all(abs(h["loss"] - h["student_loss"]) > 1e-3 for h in logs)


def test_obert_recipe_with_classification_keys_runs_through_run_glue(tmp_path):
    files = _files(tmp_path, "sst2")
    teacher = _model_dir(tmp_path, "teacher", 2, seed=9)
    output_dir = tmp_path / "out"
    run_glue.main(_glue_args(_model_dir(tmp_path, "student", 2), files, output_dir, "sst2", "--do_train",
                             "--do_eval", "--recipe", os.path.join(RECIPES, "obert80_glue.yaml"), *SHORT_OBS,
                             "--distill_teacher", teacher, "--logging_steps", "1"))
    assert _json(output_dir / "sparsity_report.json")["targeted_sparsity"] == pytest.approx(0.80, abs=0.001)
    assert all(abs(h["loss"] - h["student_loss"]) > 1e-3 for h in _training_logs(output_dir))


def test_sparse_transfer_keeps_every_zero_where_it_was(qa_model_dir, squad_files, tmp_path):
    sparse_dir = tmp_path / "sparse"
    model = AutoModelForQuestionAnswering.from_pretrained(qa_model_dir)
    generator = torch.Generator().manual_seed(0)
    masks = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".encoder.layer." in name and name.endswith("dense.weight") or "self." in name and "weight" in name:
                masks[name] = torch.rand(param.shape, generator=generator) < 0.6
                param[masks[name]] = 0.0
    model.save_pretrained(sparse_dir)
    make_tokenizer().save_pretrained(sparse_dir)
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(str(sparse_dir), squad_files, output_dir, "--do_train", "--learning_rate", "1e-2",
                        "--recipe", os.path.join(RECIPES, "sparse_transfer_squad.yaml"),
                        "--teacher_model_name_or_path", qa_model_dir))
    trained = dict(AutoModelForQuestionAnswering.from_pretrained(output_dir).named_parameters())
    before = dict(model.named_parameters())
    assert len(masks) == 12
    for name, mask in masks.items():
        assert torch.equal(trained[name] == 0, mask), name  # the same zeros, no more, no fewer
        assert not torch.allclose(trained[name][~mask], before[name][~mask]), name  # the rest did train


LAYER_PRUNING_MD = """\
<!-- A recipe in the integration's Markdown form: YAML front matter, then prose. -->

---
num_epochs: &num_epochs 2
pruning_modifiers:
  - !LayerPruningModifier
    end_epoch: -1.0
    layers:
      - bert.encoder.layer.1
    start_epoch: -1.0
    update_frequency: -1.0

  - !GMPruningModifier
    params:
      - re:bert.encoder.layer.*.attention.self.query.weight
      - re:bert.encoder.layer.*.intermediate.dense.weight
    start_epoch: 0
    end_epoch: 1
    init_sparsity: 0.0
    final_sparsity: 0.5
    inter_func: cubic
    update_frequency: 0.1
    leave_enabled: True
    mask_type: [1, 4]

training_modifiers:
  - !EpochRangeModifier
    end_epoch: *num_epochs
    start_epoch: 0.0
---

# Layer-dropped BERT

Drops the middle encoder layer and prunes two matrices of each remaining layer in blocks of four.
"""


def test_layer_pruning_recipe_saves_a_shallower_model_that_reloads(squad_files, tmp_path):
    model_dir = tmp_path / "three-layers"
    make_bert(hidden_size=32, num_layers=3, seed=5).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    recipe = tmp_path / "layers.md"
    recipe.write_text(LAYER_PRUNING_MD)
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(str(model_dir), squad_files, output_dir, "--do_train", "--do_eval", "--do_onnx_export",
                        "--nm_prune_config", str(recipe)))
    assert _json(output_dir / "config.json")["num_hidden_layers"] == 2
    report = _json(output_dir / "sparsity_report.json")
    targeted = [r["name"] for r in report["parameters"] if r["targeted"]]
    # the kept layers 0 and 2 are renumbered 0 and 1, and their matrices are still the ones reported as pruned
    assert targeted == [f"bert.encoder.layer.{i}.{w}" for i in (0, 1)
                        for w in ("attention.self.query.weight", "intermediate.dense.weight")]
    assert report["targeted_sparsity"] == pytest.approx(0.5, abs=0.01)
    reloaded = AutoModelForQuestionAnswering.from_pretrained(output_dir)
    for name in targeted:  # zeros in aligned blocks of four along the input dimension
        zeros = (dict(reloaded.named_parameters())[name] == 0).reshape(-1, 4)
        assert bool((zeros.all(-1) | ~zeros.any(-1)).all()) and bool(zeros.any())
    assert _json(output_dir / "onnx_parity.json")["parity_ok"]
    blocky = 0  # the export keeps the blocks: its MatMul weights are the transposed matrices, (input, output)
    for initializer in onnx.load(output_dir / "model.onnx").graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.ndim == 2 and (values == 0).mean() > 0.4:
            zeros = (values == 0).T.reshape(-1, 4)
            assert bool((zeros.all(-1) | ~zeros.any(-1)).all())
            blocky += 1
    assert blocky == 4
    # an evaluation-only run of the saved model reproduces the metrics
    again = tmp_path / "eval"
    run_qa.main(qa_args(str(output_dir), squad_files, again, "--do_eval"))
    assert _f1(again) == pytest.approx(_f1(output_dir))


def _whole_and_resumed(model_dir, squad_files, tmp_path, checkpoint_step, *recipe_flags):
    """An uninterrupted run, and another resumed from the first one's checkpoint at checkpoint_step."""
    common = ["--do_train", "--do_eval", *recipe_flags, "--logging_steps", "1", "--save_strategy", "steps",
              "--save_steps", str(checkpoint_step)]
    whole, resumed = tmp_path / "whole", tmp_path / "resumed"
    run_qa.main(qa_args(model_dir, squad_files, whole, *common))
    resumed.mkdir()
    shutil.copytree(whole / f"checkpoint-{checkpoint_step}", resumed / f"checkpoint-{checkpoint_step}")
    run_qa.main(qa_args(model_dir, squad_files, resumed, *common, "--resume_from_checkpoint", "last"))
    return whole, resumed


RESUME_RECIPE = """
    num_epochs: 2
    training_modifiers:
      - !EpochRangeModifier
        start_epoch: 0
        end_epoch: eval(num_epochs)
      - !LearningRateFunctionModifier
        start_epoch: 0
        end_epoch: eval(num_epochs)
        lr_func: cyclic_linear
        cycle_epochs: 0.4
        init_lr: 2e-3
        final_lr: 1e-4
      - !GMPruningModifier
        params: ["re:bert.encoder.layer.*.intermediate.dense.weight"]
        init_sparsity: 0.0
        final_sparsity: 0.8
        start_epoch: 0
        end_epoch: 1.5
        update_frequency: 0.01
    distillation_modifiers:
      - !DistillationModifier
        hardness: 0.5
        temperature: 2.0
        distill_output_keys: [start_logits, end_logits]
"""


def test_resume_with_lr_and_distillation_modifiers_matches_the_uninterrupted_run(qa_model_dir, squad_files,
                                                                                  tmp_path):
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(RESUME_RECIPE))
    whole, resumed = _whole_and_resumed(qa_model_dir, squad_files, tmp_path, 10, "--recipe", str(recipe),
                                        "--distill_teacher", qa_model_dir)

    def by_step(output_dir, key):
        return {h["step"]: h[key] for h in _training_logs(output_dir) if h["step"] > 10}

    for key in ("learning_rate", "sparsity", "loss", "student_loss"):
        expected, got = by_step(whole, key), by_step(resumed, key)
        assert set(got) == set(expected) == set(range(11, 31)), key
        for step in expected:
            assert got[step] == pytest.approx(expected[step], rel=1e-4, abs=1e-6), (key, step)
    assert _f1(resumed) == pytest.approx(_f1(whole))


COARSE_SCHEDULES_RECIPE = """
    training_modifiers:
      - !EpochRangeModifier
        start_epoch: 0
        end_epoch: 2
      - !OBSPruningModifier
        params: ["re:bert.encoder.layer.*.intermediate.dense.weight"]
        init_sparsity: 0.3
        final_sparsity: 0.7
        start_epoch: 0
        end_epoch: 1.0
        update_frequency: 0.4
        global_sparsity: True
        num_grads: 16
        fisher_block_size: 8
        grad_sampler_kwargs:
          batch_size: 4
      - !GMPruningModifier
        params: ["re:bert.encoder.layer.*.output.dense.weight"]
        init_sparsity: 0.2
        final_sparsity: 0.8
        start_epoch: 0
        end_epoch: 1.5
        update_frequency: 0.5
"""


def test_resume_between_pruning_steps_keeps_the_recipes_pruning_steps(qa_model_dir, squad_files, tmp_path):
    # 15 steps an epoch: OBS prunes at steps 0, 6, 12 and 15, GMP at 0, 8, 16 and 23. Resumed from step 10, each
    # must prune next where the unbroken run did (not at step 10, with its later steps shifted), and restoring
    # their masks from the checkpoint must change no weight
    recipe = tmp_path / "recipe.yaml"
    recipe.write_text(textwrap.dedent(COARSE_SCHEDULES_RECIPE))
    whole, resumed = _whole_and_resumed(qa_model_dir, squad_files, tmp_path, 10, "--recipe", str(recipe))

    def by_step(output_dir, key):
        return {h["step"]: h[key] for h in _training_logs(output_dir) if h["step"] > 10}

    expected, got = by_step(whole, "sparsity"), by_step(resumed, "sparsity")
    assert set(got) == set(expected) == set(range(11, 31))
    assert got == pytest.approx(expected, abs=1e-4)
    # the losses of the steps before OBS samples gradients again (step 13) are the unbroken run's: same weights
    expected, got = by_step(whole, "loss"), by_step(resumed, "loss")
    assert [got[step] for step in (11, 12, 13)] == pytest.approx([expected[step] for step in (11, 12, 13)], rel=1e-4)


def test_prune_quant_recipe_trains_int8_and_reloads_for_evaluation_and_export(qa_model_dir, squad_files, tmp_path):
    model_dir = tmp_path / "twelve-layers"
    make_bert(hidden_size=32, num_layers=12, seed=6).save_pretrained(model_dir)
    make_tokenizer().save_pretrained(model_dir)
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(str(model_dir), squad_files, output_dir, "--do_train", "--do_eval", "--do_onnx_export",
                        "--recipe", os.path.join(RECIPES, "bert_6layers_prune_quant90.md"),
                        "--distill_teacher", qa_model_dir, "--logging_steps", "5"))
    assert _json(output_dir / "config.json")["num_hidden_layers"] == 6
    report = _json(output_dir / "sparsity_report.json")
    assert report["targeted_sparsity"] == pytest.approx(0.9, abs=0.01)
    assert sum(r["targeted"] for r in report["parameters"]) == 36  # 6 matrices x 6 kept layers, through QAT
    parity = _json(output_dir / "onnx_parity.json")
    assert parity["precision"] == "int8" and parity["parity_ok"], parity
    # every pruned matrix, the QA head and the two attention matmuls of each layer
    assert parity["integer_ops"]["MatMulInteger"] == 6 * 6 + 1 + 6 * 2
    assert parity["initializer_sparsity"] > 0.6  # the pruned zeros survive as the integer weights' zero point

    # the saved folder reloads as the same fake-quantized model: evaluation reproduces, export gives integer ops
    again = tmp_path / "again"
    run_qa.main(qa_args(str(output_dir), squad_files, again, "--do_eval", "--do_onnx_export"))
    assert _f1(again) == pytest.approx(_f1(output_dir))
    reexported = _json(again / "onnx_parity.json")
    assert reexported["parity_ok"] and reexported["integer_ops"] == parity["integer_ops"]
    assert not os.path.exists("sparse_logs")


def _zero_encoder_weights(model, fraction, seed=0):
    """Zero a random share of each encoder weight matrix: an already sparse model. Returns the masks."""
    generator = torch.Generator().manual_seed(seed)
    masks = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if ".encoder.layer." in name and name.endswith("weight") and param.dim() == 2:
                masks[name] = torch.rand(param.shape, generator=generator) < fraction
                param[masks[name]] = 0.0
    return masks


def test_qat_of_a_pruned_model_keeps_its_zeros_and_exports_integer_ops(qa_model_dir, squad_files, tmp_path):
    from sparsebert.arguments import ModelArguments
    from sparsebert.pipeline import load_model

    sparse_dir = tmp_path / "sparse"
    model = AutoModelForQuestionAnswering.from_pretrained(qa_model_dir)
    masks = _zero_encoder_weights(model, 0.7)
    model.save_pretrained(sparse_dir)
    make_tokenizer().save_pretrained(sparse_dir)
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(str(sparse_dir), squad_files, output_dir, "--do_train", "--do_eval", "--do_onnx_export",
                        "--recipe", os.path.join(RECIPES, "qat1epoch.yaml")))
    parity = _json(output_dir / "onnx_parity.json")
    assert parity["precision"] == "int8" and parity["parity_ok"]
    assert parity["integer_ops"] == {"MatMulInteger": 12 + 1 + 2 * 2}
    # the zeros are where they were, in the quantized model as saved (its layers wrapped: ...query.module.weight)
    quantized = load_model(ModelArguments(model_name_or_path=str(output_dir)), AutoModelForQuestionAnswering,
                           AutoModelForQuestionAnswering.from_pretrained(qa_model_dir).config)
    weights = {name.replace(".module.", "."): param for name, param in quantized.named_parameters()}
    for name, mask in masks.items():
        assert torch.equal(weights[name] == 0, mask), name


def test_resume_after_quantization_started_matches_the_uninterrupted_run(qa_model_dir, squad_files, tmp_path):
    # 15 steps an epoch; QAT from epoch 2 (step 30): the checkpoint at step 40 holds a quantized model, which the
    # resumed run must rebuild before loading it
    whole, resumed = _whole_and_resumed(qa_model_dir, squad_files, tmp_path, 40,
                                        "--recipe", os.path.join(RECIPES, "80sparsity_qat3epoch.yaml"))
    losses = {h["step"]: h["loss"] for h in _training_logs(whole) if h["step"] > 40}
    assert {h["step"]: h["loss"] for h in _training_logs(resumed) if h["step"] > 40} == pytest.approx(losses, rel=1e-4)
    assert _f1(resumed) == pytest.approx(_f1(whole))
    assert _json(resumed / "sparsity_report.json")["targeted_sparsity"] == pytest.approx(0.8, abs=0.005)
