"""The recipe does what it promises: which weights, how sparse, and when."""

import os

import pytest
from transformers import TrainingArguments

from conftest import RECIPES
from helpers import SparsityRecorder, random_qa_dataset
from sparsebert.demo import make_bert
from sparsebert.recipe import load_recipe, save_recipe, schedule_epochs, targeted_parameter_names
from sparsebert.trainer import SparseMLTrainer

ENCODER_WEIGHTS = ("attention.self.query.weight", "attention.self.key.weight", "attention.self.value.weight",
                   "attention.output.dense.weight", "intermediate.dense.weight", "output.dense.weight")


def _train(tmp_path, recipe, recipe_variables=None, batch_size=8, accumulation=1, rows=48, num_layers=2):
    model = make_bert(hidden_size=32, num_layers=num_layers)
    manager = load_recipe(os.path.join(RECIPES, recipe), recipe_variables)
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=batch_size,
                             gradient_accumulation_steps=accumulation, num_train_epochs=schedule_epochs(manager),
                             learning_rate=1e-3, report_to="none", save_strategy="no", disable_tqdm=True,
                             use_cpu=True, seed=0)
    trainer = SparseMLTrainer(model=model, args=args, train_dataset=random_qa_dataset(rows), recipe=manager)
    targeted = trainer.targeted_names
    recorder = SparsityRecorder(model, targeted)
    trainer.add_callback(recorder)
    trainer.train()
    return model, targeted, recorder.history, trainer


def test_recipe_targets_exactly_the_encoder_matrices_at_any_depth():
    for depth in (2, 3):
        model = make_bert(hidden_size=32, num_layers=depth)
        manager = load_recipe(os.path.join(RECIPES, "90sparsity2epoch.yaml"))
        targeted = targeted_parameter_names(manager, model)
        expected = [f"bert.encoder.layer.{i}.{w}" for i in range(depth) for w in ENCODER_WEIGHTS]
        assert sorted(targeted) == sorted(expected)


def test_a_saved_resolved_recipe_targets_the_same_matrices_when_used_again(tmp_path):
    """output_dir/recipe.yaml, resolved by sparseml when --recipe_args changed the recipe, is a recipe a user runs
    again (sparse transfer, QAT of the pruned model): its regex patterns must read back as written."""
    model = make_bert(hidden_size=32, num_layers=2)
    manager = load_recipe(os.path.join(RECIPES, "finetuned_gmp80.yaml"), {"init_lr": 1e-3})
    save_recipe(manager, os.path.join(RECIPES, "finetuned_gmp80.yaml"), {"init_lr": 1e-3}, str(tmp_path))
    saved = load_recipe(str(tmp_path / "recipe.yaml"))
    expected = [f"bert.encoder.layer.{i}.{w}" for i in range(2) for w in ENCODER_WEIGHTS]
    assert sorted(targeted_parameter_names(saved, model)) == sorted(expected)
    assert [m.params for m in saved.pruning_modifiers] == [m.params for m in manager.pruning_modifiers]


def test_gmp_reaches_final_sparsity_on_matched_parameters_only(tmp_path):
    zeros_before = {n: int((p == 0).sum()) for n, p in make_bert(hidden_size=32).named_parameters()}
    model, targeted, _, _ = _train(tmp_path, "80sparsity2epoch.yaml")
    for name, param in model.named_parameters():
        if name in targeted:
            assert float((param == 0).float().mean()) == pytest.approx(0.80, abs=2 / param.numel()), name
        else:  # embeddings (their zero padding row aside), biases, LayerNorms, the QA head stay dense
            assert int((param == 0).sum()) <= zeros_before[name], name  # no new zeros (biases start at 0)


def test_one_shot_prunes_at_the_first_step(tmp_path):
    _, targeted, history, _ = _train(tmp_path, "90sparsity1shot.yaml")
    for name in targeted:
        assert history[0][name] == pytest.approx(0.90, abs=0.01)
        assert history[-1][name] == pytest.approx(0.90, abs=0.01)


def test_a_fractional_schedule_trains_exactly_its_length(tmp_path):
    # 6 steps per epoch; a half-epoch recipe is 3 optimizer steps, not the whole epoch sparseml rounds up to
    assert schedule_epochs(load_recipe(os.path.join(RECIPES, "obs_oneshot80.yaml"))) == 0.001
    _, targeted, history, trainer = _train(tmp_path, "90sparsity1shot.yaml",
                                           {"num_epochs": 0.5, "pruning_end_epoch": 0.5})
    assert trainer.steps_per_epoch == 6
    assert trainer.state.global_step == 3 == len(history)
    assert history[-1][targeted[0]] == pytest.approx(0.90, abs=0.01)


def test_sparsity_follows_the_cubic_schedule(tmp_path):
    # 48 rows / batch 8 = 6 steps per epoch; prune 0 -> 80% over epochs 0-2, updating every step
    variables = {"num_epochs": 3.0, "pruning_end_epoch": 2.0, "update_frequency": 0.01}
    _, targeted, history, trainer = _train(tmp_path, "80sparsity2epoch.yaml", variables)
    steps_per_epoch = trainer.steps_per_epoch
    assert steps_per_epoch == 6 and len(history) == 18

    def cubic(epoch):  # sparseml's GMP: final + (init - final) * (1 - progress)^3
        progress = min(max(epoch / 2.0, 0.0), 1.0)
        return 0.8 + (0.0 - 0.8) * (1 - progress) ** 3

    name = targeted[0]
    tolerance = 2 / dict(trainer.model.named_parameters())[name].numel()
    for step, sparsities in enumerate(history, start=1):
        # the update before optimizer step k runs at epoch (k - 1) / steps_per_epoch
        assert sparsities[name] == pytest.approx(cubic((step - 1) / steps_per_epoch), abs=tolerance), step
    assert 0.0 < history[3][name] < history[6][name] < history[11][name] < 0.8  # strictly inside the ramp


def test_steps_per_epoch_counts_optimizer_steps_under_gradient_accumulation(tmp_path):
    # 48 rows, batch 4 -> 12 batches; accumulating 3 -> 4 optimizer steps per epoch. A recipe epoch must be
    # those 4 steps, so a 2-epoch recipe ends after 8 steps exactly at its final sparsity.
    _, targeted, history, trainer = _train(tmp_path, "80sparsity2epoch.yaml", {"pruning_end_epoch": 1.0},
                                           batch_size=4, accumulation=3)
    assert trainer.steps_per_epoch == 4
    assert trainer.state.global_step == 8 == len(history)
    name = targeted[0]
    assert history[3][name] < 0.8  # still ramping on the last step of epoch 0
    assert history[4][name] == pytest.approx(0.8, abs=0.01)  # epoch 1 begins at the final sparsity
