"""sparseml's modifiers beyond pruning, as published BERT recipes use them: each one visibly acts (a test fails if
it were ignored), driven by our Trainer."""

import math
import textwrap

import onnx
import pytest
import torch
from transformers import TrainerCallback, TrainingArguments

from helpers import random_qa_dataset
from sparsebert.errors import UsageError
from sparsebert.demo import make_bert
from sparsebert.recipe import load_recipe
from sparsebert.recipe_run import RecipeRun
from sparsebert.trainer import SparseMLTrainer

ROWS, BATCH = 48, 8  # 6 optimizer steps per epoch


def write_recipe(tmp_path, text, name="recipe.yaml"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


class OptimizerRecorder(TrainerCallback):
    """The learning rate and weight decay each optimizer step used, read from the optimizer itself."""

    def __init__(self):
        self.lrs, self.weight_decays = [], []

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        groups = optimizer.param_groups
        self.lrs.append(groups[0]["lr"])
        self.weight_decays.append([g["weight_decay"] for g in groups])


def train(tmp_path, recipe_path, teacher=None, learning_rate=1e-3, logging_steps=1, model=None, quantize_attention=True,
          **model_kwargs):
    model = model or make_bert(hidden_size=32, **model_kwargs)
    manager = load_recipe(recipe_path)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH,
                             num_train_epochs=manager.max_epochs, learning_rate=learning_rate, report_to="none",
                             save_strategy="no", disable_tqdm=True, use_cpu=True, seed=0, logging_steps=logging_steps)
    trainer = SparseMLTrainer(model=model, args=args, train_dataset=random_qa_dataset(ROWS), recipe=recipe_path,
                              teacher=teacher, quantize_attention=quantize_attention)
    recorder = OptimizerRecorder()
    trainer.add_callback(recorder)
    trainer.train()
    logged = [h for h in trainer.state.log_history if "loss" in h]
    return trainer, recorder, logged


LR_RECIPE = """
    modifiers:
      - !EpochRangeModifier
        start_epoch: 0
        end_epoch: 3
    training_modifiers:
      - !LearningRateFunctionModifier
        start_epoch: 0.0
        end_epoch: 1.0
        lr_func: linear
        init_lr: 0.01
        final_lr: 0.002
      - !LearningRateFunctionModifier
        start_epoch: 1.0
        end_epoch: 3.0
        lr_func: cyclic_linear
        cycle_epochs: 1.0
        init_lr: 0.004
        final_lr: 0.0004
"""


def test_learning_rate_is_the_recipes_function_at_every_step(tmp_path):
    trainer, recorder, logged = train(tmp_path, write_recipe(tmp_path, LR_RECIPE), learning_rate=0.5)
    steps_per_epoch = trainer.steps_per_epoch
    assert steps_per_epoch == 6 and len(recorder.lrs) == 18

    def expected(step):  # step counts from 0; the recipe sees epoch = step / steps_per_epoch before the step
        epoch = step / steps_per_epoch
        if epoch < 1.0:  # linear from init_lr at epoch 0 towards final_lr at epoch 1
            return 0.01 + epoch * (0.002 - 0.01)
        # restarts: each 1-epoch cycle runs linearly from init_lr at its first step to final_lr at its last
        position = (step - steps_per_epoch) % steps_per_epoch
        return 0.004 - position / (steps_per_epoch - 1) * (0.004 - 0.0004)

    for step, lr in enumerate(recorder.lrs):
        assert lr == pytest.approx(expected(step), rel=1e-9), step
    # what the Trainer logs is the same learning rate, not its own scheduler's
    assert [h["learning_rate"] for h in logged] == pytest.approx(recorder.lrs, rel=1e-9)
    assert recorder.lrs[6] > recorder.lrs[5] and recorder.lrs[12] > recorder.lrs[11]  # the restarts


@pytest.mark.parametrize("span, problem", [
    ("0.9", r"cycles of 0.5 epochs = 3 optimizer steps at 6 per epoch\): sparseml would set a negative \(-0.000286\) "
            r"learning rate at step 4"),
    ("1.0", r"it ends before training does \(epoch 2\) and no learning-rate modifier follows"),
])
def test_cyclic_learning_rates_sparseml_would_get_wrong_are_refused_before_training(tmp_path, span, problem):
    recipe = write_recipe(tmp_path, f"""
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 2
          - !LearningRateFunctionModifier
            start_epoch: 0.0
            end_epoch: {span}
            lr_func: cyclic_linear
            cycle_epochs: 0.5
            init_lr: 0.01
            final_lr: 0.001
    """)
    with pytest.raises(UsageError, match=problem):
        train(tmp_path, recipe)
    assert not (tmp_path / "out").exists()


def test_set_learning_rate_and_weight_decay_take_effect_at_their_epoch(tmp_path):
    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 2
          - !SetLearningRateModifier
            start_epoch: 1.0
            learning_rate: 0.003
          - !SetWeightDecayModifier
            start_epoch: 1.0
            weight_decay: 0.25
    """)
    _, recorder, _ = train(tmp_path, recipe, learning_rate=0.001)
    # before epoch 1 the optimizer's own value, unscheduled (the Trainer's linear decay steps aside)
    assert recorder.lrs[:6] == pytest.approx([0.001] * 6)
    assert recorder.lrs[6:] == pytest.approx([0.003] * 6)
    assert all(wd == [0.0, 0.0] for wd in recorder.weight_decays[:6])
    assert all(wd == [0.25, 0.25] for wd in recorder.weight_decays[6:])


def test_without_lr_modifiers_the_trainer_schedule_stays(tmp_path):
    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 1
    """)
    _, recorder, _ = train(tmp_path, recipe, learning_rate=0.006)
    assert recorder.lrs == pytest.approx([0.006 * (1 - step / 6) for step in range(6)])  # HF's linear decay


DISTILL_RECIPE = """
    modifiers:
      - !EpochRangeModifier
        start_epoch: 0
        end_epoch: 1
      - !DistillationModifier
        hardness: {hardness}
        temperature: 2.0
        distill_output_keys: [start_logits, end_logits]
"""


class FixedLogits(torch.nn.Module):
    def __init__(self, logits):
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(1))  # sparseml reads the teacher's device from a parameter
        self.logits = logits

    def forward(self, **inputs):
        return {key: value.clone() for key, value in self.logits.items()}


def test_distillation_modifier_loss_on_hand_made_logits(tmp_path):
    # teacher softmax at T=2 is (0.75, 0.25), the student's (0.5, 0.5):
    # KL = 0.75 ln 1.5 + 0.25 ln 0.5, times T^2 = 4; the same for both heads
    kl = 4 * (0.75 * math.log(1.5) + 0.25 * math.log(0.5))
    teacher_logits = torch.tensor([[2 * math.log(3.0), 0.0]])
    student_logits = torch.zeros(1, 2)
    teacher = FixedLogits({"start_logits": teacher_logits, "end_logits": teacher_logits})
    model = make_bert(hidden_size=32)
    run = RecipeRun(load_recipe(write_recipe(tmp_path, DISTILL_RECIPE.format(hardness=0.25))), "r", teacher=teacher)
    run.wrap_optimizer(torch.optim.SGD(model.parameters(), lr=0.1), model, steps_per_epoch=6, start_epoch=0.0)
    student_loss = torch.tensor(1.5)
    outputs = {"start_logits": student_logits, "end_logits": student_logits}
    total = run.loss_update(student_loss, model, outputs, {"input_ids": torch.ones(1, 2, dtype=torch.long)})
    assert float(total) == pytest.approx(0.75 * 1.5 + 0.25 * kl, rel=1e-6)


def test_recipe_distillation_and_cli_distillation_are_never_both_applied(tmp_path):
    # The teacher is the student itself (no dropout): at the first step the teacher's part is 0, so the loss is
    # exactly (1 - the recipe's hardness 0.25) x the student's loss. Our own distillation (hardness 1.0 by default)
    # would give 0; both together something else again.
    student = make_bert(hidden_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    teacher = make_bert(hidden_size=32, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    recipe = write_recipe(tmp_path, DISTILL_RECIPE.format(hardness=0.25))
    trainer, _, logged = train(tmp_path, recipe, teacher=teacher, model=student)
    assert trainer.teacher is None and trainer.recipe_run.teacher is teacher
    first = logged[0]
    assert first["loss"] == pytest.approx(0.75 * first["student_loss"], rel=1e-3)
    assert all(h["loss"] != pytest.approx(h["student_loss"], rel=1e-3) for h in logged[1:])  # the teacher counts


def test_unsupported_modifier_is_refused_by_name(tmp_path):
    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 1
          - !ACDCPruningModifier
            params: __ALL_PRUNABLE__
            compression_sparsity: 0.9
            start_epoch: 0
            end_epoch: 1
            update_frequency: 0.5
    """)
    with pytest.raises(UsageError, match=r"!ACDCPruningModifier \(line 6\) is not supported "
                                         r".*supported: EpochRangeModifier, "
                                         r"GMPruningModifier, .*OBSPruningModifier"):
        load_recipe(recipe)


def test_obs_reaches_the_global_target_and_prunes_unlike_magnitude(tmp_path):
    # learning rate 0: only OBS changes the weights. At the first step it prunes to 50% over all matrices together,
    # ranking weights by w^2 / [F^-1]_ii from sampled gradients, not by |w|.
    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 1
          - !OBSPruningModifier
            params: ["re:bert.encoder.layer.*.attention.self.query.weight",
                     "re:bert.encoder.layer.*.intermediate.dense.weight",
                     're:bert.encoder.layer.\\d+.output.dense.weight']
            init_sparsity: 0.5
            final_sparsity: 0.5
            start_epoch: 0
            end_epoch: 1
            update_frequency: 1.0
            global_sparsity: True
            num_grads: 8
            damp: 1e-7
            fisher_block_size: 16
            grad_sampler_kwargs:
              batch_size: 4
    """)
    model = make_bert(hidden_size=32)
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    trainer, _, _ = train(tmp_path, recipe, learning_rate=0.0, model=model)
    targeted = trainer.targeted_names
    assert len(targeted) == 6
    params = dict(trainer.model.named_parameters())
    zeros = torch.cat([(params[n] == 0).flatten() for n in targeted])
    assert float(zeros.float().mean()) == pytest.approx(0.5, abs=1e-3)  # the global target
    per_matrix = [float((params[n] == 0).float().mean()) for n in targeted]
    assert max(per_matrix) - min(per_matrix) > 0.05  # matrices end at different sparsities
    # global magnitude pruning of the same weights would have removed the smallest |w|
    magnitudes = torch.cat([before[n].abs().flatten() for n in targeted])
    by_magnitude = magnitudes <= magnitudes.kthvalue(zeros.sum().item()).values
    disagree = float((by_magnitude != zeros).float().mean())
    assert disagree > 0.01, disagree  # measured 3.5% (about 360 of 10,240 weights); magnitude itself would give 0
    # and OBS updated the weights it kept to make up for the removed ones (its weight correction)
    kept = ~zeros
    old = torch.cat([before[n].flatten() for n in targeted])
    new = torch.cat([params[n].detach().flatten() for n in targeted])
    assert not torch.allclose(old[kept], new[kept])


def test_obs_refuses_a_fisher_that_cannot_fit(tmp_path, monkeypatch):
    import psutil

    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 1
          - !OBSPruningModifier
            params: __ALL_PRUNABLE__
            init_sparsity: 0.5
            final_sparsity: 0.5
            start_epoch: 0
            end_epoch: 1
            update_frequency: 1.0
            num_grads: 8
            fisher_block_size: 64
    """)

    class Tiny:
        available = 1000

    monkeypatch.setattr(psutil, "virtual_memory", lambda: Tiny)
    with pytest.raises(UsageError, match=r"OBS needs 0\.\d+ GiB for its inverse Fisher blocks .* only 0\.00 GiB"):
        train(tmp_path, recipe)


def test_block_masks_zero_aligned_groups_of_four(tmp_path):
    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 2
          - !GMPruningModifier
            params: ["re:bert.encoder.layer.*.intermediate.dense.weight", "re:bert.encoder.layer.*.output.dense.weight"]
            init_sparsity: 0.0
            final_sparsity: 0.75
            start_epoch: 0
            end_epoch: 1
            update_frequency: 0.2
            mask_type: [1, 4]
    """)
    trainer, _, _ = train(tmp_path, recipe)
    params = dict(trainer.model.named_parameters())
    for name in trainer.targeted_names:
        weight = params[name].detach()
        groups = (weight == 0).reshape(weight.shape[0], -1, 4)  # 4 neighbours along the input dimension
        assert float((weight == 0).float().mean()) == pytest.approx(0.75, abs=0.02)
        assert bool((groups.all(-1) | ~groups.any(-1)).all()), name  # each group all zero or all kept


def test_mixed_precision_stops_when_quantization_aware_training_starts(tmp_path):
    # a real accelerate run in bf16 mixed precision (the CPU's autocast): the model runs under autocast until the
    # recipe's QuantizationModifier starts at epoch 1 (step 7 of 6 a epoch), in full precision from there on
    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 2
          - !QuantizationModifier
            start_epoch: 1.0
            submodules: [bert.embeddings, bert.encoder, qa_outputs]
    """)
    model = make_bert(hidden_size=32)
    under_autocast = []
    model.bert.embeddings.register_forward_hook(
        lambda module, inputs, output: under_autocast.append(torch.is_autocast_enabled("cpu")) if module.training
        else None)
    args = TrainingArguments(output_dir=str(tmp_path / "out"), per_device_train_batch_size=BATCH, bf16=True,
                             use_cpu=True, report_to="none", save_strategy="no", disable_tqdm=True, seed=0)
    trainer = SparseMLTrainer(model=model, args=args, train_dataset=random_qa_dataset(ROWS), recipe=recipe)
    assert trainer.accelerator.native_amp  # mixed precision is on to begin with
    trainer.train()
    assert under_autocast == [True] * 6 + [False] * 6
    assert not trainer.accelerator.native_amp and trainer.accelerator.scaler is None
    assert not hasattr(trainer.model, "_original_forward")  # accelerate's autocast wrapper is gone from forward


@pytest.mark.parametrize("modifier", ["GlobalMagnitudePruningModifier", "MovementPruningModifier"])
def test_global_magnitude_and_movement_pruning_reach_their_target(tmp_path, modifier):
    recipe = write_recipe(tmp_path, f"""
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 2
          - !{modifier}
            params: ["re:bert.encoder.layer.\\\\d+.intermediate.dense.weight",
                     "re:bert.encoder.layer.\\\\d+.attention.self.query.weight"]
            init_sparsity: 0.0
            final_sparsity: 0.6
            start_epoch: 0
            end_epoch: 1
            update_frequency: 0.2
    """)
    model = make_bert(hidden_size=32)
    trainer, _, logged = train(tmp_path, recipe, model=model)
    params = dict(trainer.model.named_parameters())
    sparsities = [float((params[n] == 0).float().mean()) for n in trainer.targeted_names]
    zeros = sum(int((params[n] == 0).sum()) for n in trainer.targeted_names)
    total = sum(params[n].numel() for n in trainer.targeted_names)
    assert zeros / total == pytest.approx(0.6, abs=0.01)
    if modifier == "GlobalMagnitudePruningModifier":  # one threshold over all matrices: they end unequal
        assert max(sparsities) - min(sparsities) > 0.01
    else:  # movement: each matrix to the target, ranked by how weights moved, not by their final size
        assert sparsities == pytest.approx([0.6] * len(sparsities), abs=0.01)
    assert 0.0 < logged[2]["sparsity"] < logged[4]["sparsity"] < 0.6  # gradual, as the schedule says


QAT_RECIPE = """
    modifiers:
      - !EpochRangeModifier
        start_epoch: 0
        end_epoch: 1
      - !QuantizationModifier
        start_epoch: 0.0
        submodules: [bert.embeddings, bert.encoder, qa_outputs]
"""


def onnx_outputs(model_proto, batch):
    import onnxruntime

    session = onnxruntime.InferenceSession(model_proto.SerializeToString(), providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]
    return session.run(None, {name: batch[name].numpy() for name in names})


def int8_rule_on_each_cpu(model_proto, model, batch, report) -> dict:
    """isa -> whether the file, run as onnxruntime's kernel for that instruction set computes (emulated, so on any
    CPU), passes the INT8 rule against the PyTorch model, counted from the floor the export measured."""
    from sparsebert.integer_products import ISA_PATHS, emulate_isa
    from sparsebert.onnx_export import compare_outputs, int8_rule

    with torch.no_grad():
        output = model.eval()(**batch)
    expected = [output[name].numpy() for name in ("start_logits", "end_logits")]
    floor = {"agreement": report["own_rounding_floor"]["prediction_agreement"],
             "mean_abs_diff": report["own_rounding_floor"]["mean_abs_diff"]}
    mask = batch["attention_mask"].numpy().astype(bool)
    return {isa: int8_rule(compare_outputs(onnx_outputs(emulate_isa(model_proto, isa), batch), expected, mask),
                           floor)[0] for isa in ISA_PATHS}


@pytest.mark.parametrize("quantize_attention, integer_matmuls", [(True, 13 + 2 * 2), (False, 13)])
def test_quantization_aware_training_exports_integer_matmuls(tmp_path, quantize_attention, integer_matmuls):
    from sparsebert.demo import make_tokenizer
    from sparsebert.integer_products import saturating_products
    from sparsebert.onnx_export import export_onnx, make_batch

    trainer, _, _ = train(tmp_path, write_recipe(tmp_path, QAT_RECIPE), quantize_attention=quantize_attention)
    tokenizer = make_tokenizer()
    batch = make_batch(tokenizer, batch_size=64, seq_len=16, seed=99)
    report = export_onnx(trainer.model, tokenizer, str(tmp_path / "onnx"), ("start_logits", "end_logits"),
                         verify_batch=batch)
    # 12 encoder Linear layers and the QA head; with quantized attention, its two products in each of 2 layers
    assert report["precision"] == "int8" and report["integer_ops"] == {"MatMulInteger": integer_matmuls}
    assert report["parity_ok"], report
    # every product uint8 x uint8: exact on every x86 CPU, with or without VNNI, as each one's kernel computes it
    exported = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    initializers = {init.name: init.data_type for init in exported.graph.initializer}
    weights = [initializers[node.input[1]] for node in exported.graph.node
               if node.op_type == "MatMulInteger" and node.input[1] in initializers]
    assert weights and set(weights) == {onnx.TensorProto.UINT8}
    assert saturating_products(exported) == [] and report["saturating_products_without_vnni"] == []
    assert int8_rule_on_each_cpu(exported, trainer.model, batch, report) == {"avx2": True, "vnni": True}
    # the integer graph computes what the fake-quantized model computes, up to float rounding: sparseml's conversion
    # as it comes differs by 0.3-0.5% of the largest logit on average here (a few weights rounded the other way,
    # biases rounded to int32, the embeddings' output quantizers dropped), after our rewrites by 0.01-0.04%
    assert report["mean_abs_diff"] <= 1e-3 * report["largest_abs_output"], report
    rewrites = report["int8_graph_rewrites"]
    assert rewrites["biases_added_in_float"] == 13 and rewrites["embedding_output_quantizers_restored"] == 3


def test_int8_weights_are_caught_on_any_cpu_as_wrong_without_vnni(tmp_path):
    # the layout exports had before: right with VNNI, wrong on AVX2 alone (97% of the answers kept here); the checks
    # see it whatever CPU runs them, and the emulated kernels agree on the values the two layouts share
    from sparsebert.demo import make_tokenizer
    from sparsebert.integer_products import emulate_isa, saturating_products, with_int8_weights
    from sparsebert.onnx_export import export_onnx, make_batch

    trainer, _, _ = train(tmp_path, write_recipe(tmp_path, QAT_RECIPE))
    tokenizer = make_tokenizer()
    batch = make_batch(tokenizer, batch_size=64, seq_len=16, seed=99)
    report = export_onnx(trainer.model, tokenizer, str(tmp_path / "onnx"), ("start_logits", "end_logits"),
                         verify_batch=batch)
    exported = onnx.load(str(tmp_path / "onnx" / "model.onnx"))
    signed = with_int8_weights(exported)
    assert len(saturating_products(signed)) == 13  # the Linear layers; attention's products are uint8 x uint8
    assert int8_rule_on_each_cpu(signed, trainer.model, batch, report) == {"avx2": False, "vnni": True}
    exact = onnx_outputs(exported, batch)
    for values, same in zip(onnx_outputs(emulate_isa(signed, "vnni"), batch), exact):
        assert abs(values - same).max() < 1e-6  # the two layouts hold the same numbers
    saturated = onnx_outputs(emulate_isa(signed, "avx2"), batch)
    assert max(abs(values - same).max() for values, same in zip(saturated, exact)) > 1e-2


def test_the_sparsity_report_covers_what_sparseml_prunes_weighted_by_size(tmp_path):
    # __ALL_PRUNABLE__ is sparseml's to resolve: it takes the embeddings and the QA head too, so the report does
    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 1
          - !GMPruningModifier
            params: __ALL_PRUNABLE__
            init_sparsity: 0.5
            final_sparsity: 0.5
            start_epoch: 0
            end_epoch: 1
            update_frequency: 1.0
    """)
    trainer, _, logged = train(tmp_path, recipe)
    names = trainer.targeted_names
    assert "bert.embeddings.word_embeddings.weight" in names and "qa_outputs.weight" in names and len(names) == 16
    assert logged[-1]["sparsity"] == pytest.approx(0.5, abs=0.01)

    # two sparsities: the report weighs each matrix by its size (0.9 on 2 x 2048 weights, 0.3 on 2 x 1024: 0.7,
    # where a plain mean of the four would say 0.6)
    recipe = write_recipe(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0
            end_epoch: 1
          - !GMPruningModifier
            params: ['re:bert.encoder.layer.\\d+.intermediate.dense.weight']
            init_sparsity: 0.9
            final_sparsity: 0.9
            start_epoch: 0
            end_epoch: 1
            update_frequency: 1.0
          - !GMPruningModifier
            params: ['re:bert.encoder.layer.\\d+.attention.self.query.weight']
            init_sparsity: 0.3
            final_sparsity: 0.3
            start_epoch: 0
            end_epoch: 1
            update_frequency: 1.0
    """, name="two.yaml")
    trainer, _, logged = train(tmp_path, recipe)
    from sparsebert.sparsity import sparsity_report

    report = sparsity_report(trainer.model, trainer.targeted_names)
    assert report["targeted_sparsity"] == pytest.approx(0.7, abs=0.005)
    assert logged[-1]["sparsity"] == pytest.approx(0.7, abs=0.005)


@pytest.mark.parametrize("schedule", [
    {"start_epoch": 0.0, "end_epoch": 1.5, "update_frequency": 0.5},
    {"start_epoch": 0.3, "end_epoch": 2.0, "update_frequency": 0.25},
    {"start_epoch": 0.5, "end_epoch": 0.6, "update_frequency": 0.5},  # ends at its second update
    {"start_epoch": 1.0, "end_epoch": 1.9, "update_frequency": -1},   # every step
])
@pytest.mark.parametrize("steps_per_epoch", [15, 4])  # 4: updates fall exactly on update_frequency
def test_last_update_epoch_is_where_sparseml_last_updated(schedule, steps_per_epoch):
    # what resuming relies on: for every step a run could be resumed at, the last update sparseml's step wrapper
    # gave the modifier before it
    from sparseml.pytorch.optim import ScheduledModifierManager
    from sparseml.pytorch.sparsification import GMPruningModifier

    from sparsebert.recipe import quiet_sparseml_loggers
    from sparsebert.seams import last_update_epoch

    model = torch.nn.Sequential(torch.nn.Linear(8, 8))
    modifier = GMPruningModifier(params=["0.weight"], init_sparsity=0.2, final_sparsity=0.8, **schedule)
    wrapper = ScheduledModifierManager([modifier]).modify(model, torch.optim.SGD(model.parameters(), lr=0.1),
                                                          steps_per_epoch, loggers=quiet_sparseml_loggers())
    updated = None
    for step in range(40):
        assert last_update_epoch(modifier, steps_per_epoch, step) == updated, step
        if modifier.update_ready(wrapper.wrapped_epoch, steps_per_epoch):  # the wrapper updates it in this step
            updated = wrapper.wrapped_epoch
        wrapper.step()
    assert updated is not None


SCHEME_BASED = """
    modifiers:
      - !QuantizationModifier
        start_epoch: 0.0
        disable_quantization_observer_epoch: 0.5
        freeze_bn_stats_epoch: 0.5
        ignore: [LayerNorm, Tanh]
        scheme_overrides:
          Embedding:
            input_activations: null
            weights: {num_bits: 8, symmetric: false}
"""
CLASSIC_OF_THE_SAME_MEANING = """
    modifiers:
      - !QuantizationModifier
        start_epoch: 0.0
        disable_quantization_observer_epoch: 0.5
        freeze_bn_stats_epoch: 0.5
        weight_bits: 8
        activation_bits: 8
        quantize_linear_activations: False
        quantize_embedding_activations: False
        exclude_module_types: [LayerNorm, Tanh]
"""


def quantized_one_shot_export(tmp_path, recipe_text, name):
    """A tiny QA model given the recipe's quantized structure, its ranges calibrated on fixed batches, exported."""
    from sparsebert.demo import make_tokenizer
    from sparsebert.onnx_export import export_onnx, make_batch
    from sparsebert.quantization import freeze_observers, quantization_modifiers
    from sparsebert.recipe import quiet_sparseml_loggers

    torch.manual_seed(0)
    model = make_bert(hidden_size=32).eval()
    for modifier in quantization_modifiers(load_recipe(write_recipe(tmp_path, recipe_text, f"{name}.yaml"))):
        modifier.apply_structure(model, epoch=math.inf, loggers=quiet_sparseml_loggers())
    model.apply(torch.ao.quantization.enable_observer)
    tokenizer = make_tokenizer()
    with torch.no_grad():
        for seed in range(3):
            model(**make_batch(tokenizer, batch_size=8, seq_len=16, seed=seed))
    freeze_observers(model)
    report = export_onnx(model, tokenizer, str(tmp_path / name), ("start_logits", "end_logits"))
    return report, onnx.load(str(tmp_path / name / "model.onnx")).graph


def test_scheme_based_quantization_runs_as_the_classic_modifier_of_the_same_meaning(tmp_path):
    from onnx import numpy_helper

    from sparseml.pytorch.sparsification.quantization.modifier_quantization import LegacyQuantizationModifier

    manager = load_recipe(write_recipe(tmp_path, SCHEME_BASED))
    (modifier,) = list(manager.iter_modifiers())
    assert isinstance(modifier, LegacyQuantizationModifier)  # sparseml chose the scheme-based one for this text
    assert (modifier.disable_quantization_observer_epoch, modifier.freeze_bn_stats_epoch) == (0.5, 0.5)
    scheme_report, scheme_graph = quantized_one_shot_export(tmp_path, SCHEME_BASED, "scheme")
    classic_report, classic_graph = quantized_one_shot_export(tmp_path, CLASSIC_OF_THE_SAME_MEANING, "classic")
    assert scheme_report["parity_ok"] and scheme_report["integer_ops"] == {"MatMulInteger": 13}  # the Linear layers
    assert [n.op_type for n in scheme_graph.node] == [n.op_type for n in classic_graph.node]
    arrays = [{i.name: numpy_helper.to_array(i) for i in graph.initializer} for graph in (scheme_graph, classic_graph)]
    assert arrays[0].keys() == arrays[1].keys()
    assert all((arrays[0][name] == arrays[1][name]).all() for name in arrays[0])


@pytest.mark.parametrize("setting, refusal", [
    ("ignore: [LayerNorm, bert.encoder.layer.0.output.dense]", r"ignore of the module 'bert.encoder.layer.0.output."
                                                               r"dense' \(only module types can be left out\)"),
    ("ignore: [LayerNorm, Tanh]", r"Embedding with quantized inputs \(the token ids\) has no equivalent .*; "
                                  r"override it as sparseml's recipes do"),
    ("scheme: {input_activations: {num_bits: 8, symmetric: true}, weights: {num_bits: 8, symmetric: true}}\n"
     "        ignore: [Embedding]", r"symmetric activations has no equivalent in sparseml's classic modifier"),
    ("scheme_overrides: {Linear: {weights: {num_bits: 8, symmetric: true, strategy: channel}}}\n"
     "        ignore: [Embedding]", r"channel Linear weights \(the classic modifier has per-tensor ranges\)"),
])
def test_scheme_based_settings_without_a_classic_equivalent_are_refused_by_name(tmp_path, setting, refusal):
    recipe = write_recipe(tmp_path, f"""
        modifiers:
          - !QuantizationModifier
            start_epoch: 0.0
            {setting}
    """)
    with pytest.raises(UsageError, match=refusal):
        load_recipe(recipe)
