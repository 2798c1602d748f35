"""sparsebert.seams against the libraries it reaches into: the versions it was written for, and each entry's answer
against the library's own (a changed library, or a changed entry, fails here)."""

import importlib.metadata
import textwrap

import pytest
import torch
from transformers import Trainer, TrainingArguments

from helpers import random_qa_dataset
from sparsebert import seams
from sparsebert.demo import make_bert
from sparsebert.recipe import load_recipe


def test_the_installed_libraries_are_the_ones_the_seams_were_written_against():
    for package, version in seams.WRITTEN_AGAINST.items():
        installed = importlib.metadata.version(package)
        assert installed.startswith(version), (
            f"sparsebert/seams.py was written against {package} {version}*, this is {installed}: check each of its "
            f"entries against the new version before moving the pin")


def _load(tmp_path, text):
    path = tmp_path / "recipe.yaml"
    path.write_text(textwrap.dedent(text))
    return list(load_recipe(str(path)).iter_modifiers())


KINDS = ("is_quantization", "is_layer_pruning", "is_epoch_range", "is_distillation")


def test_modifier_kinds_are_told_by_class_including_the_classic_quantization_modifier(tmp_path):
    modifiers = _load(tmp_path, """
        modifiers:
          - !EpochRangeModifier
            start_epoch: 0.0
            end_epoch: 2.0
          - !LayerPruningModifier
            layers: [bert.encoder.layer.1]
            start_epoch: 0.0
            end_epoch: -1
          - !DistillationModifier
            hardness: 1.0
            temperature: 2.0
          - !QuantizationModifier
            start_epoch: 1.0
            submodules: [bert.encoder]
    """)
    by_name = {type(m).__name__: m for m in modifiers}
    own_kind = {"QuantizationModifier": "is_quantization", "LayerPruningModifier": "is_layer_pruning",
                "EpochRangeModifier": "is_epoch_range", "DistillationModifier": "is_distillation"}
    assert set(by_name) == set(own_kind)
    # each modifier answers to its own kind and to no other
    assert {name: [kind for kind in KINDS if getattr(seams, kind)(m)] for name, m in by_name.items()} == \
        {name: [kind] for name, kind in own_kind.items()}
    classic = by_name["QuantizationModifier"]
    assert not seams.is_scheme_based_quantization(classic)
    assert seams.is_scheme_based_quantization(seams.QuantizationModifier(start_epoch=0.0))
    assert seams.is_quantization(seams.QuantizationModifier(start_epoch=0.0))


@pytest.mark.parametrize("start, end, cycle, steps_per_epoch", [(0.0, 2.0, 0.25, 16), (0.5, 3.0, 0.5, 10),
                                                                 (0.0, 1.0, 0.3, 20)])
def test_the_restated_cyclic_linear_is_sparsemls_own(tmp_path, start, end, cycle, steps_per_epoch):
    modifier = _load(tmp_path, f"""
        modifiers:
          - !LearningRateFunctionModifier
            start_epoch: {start}
            end_epoch: {end}
            lr_func: cyclic_linear
            cycle_epochs: {cycle}
            init_lr: 0.01
            final_lr: 0.001
    """)[0]
    checked = 0
    for step in range(round(start * steps_per_epoch), round(end * steps_per_epoch)):
        epoch = step / steps_per_epoch
        ours = seams.sparseml_cyclic_linear(modifier, epoch, steps_per_epoch)
        if ours is None:  # where sparseml divides by zero
            with pytest.raises(ZeroDivisionError):
                modifier._cyclic_linear(epoch, steps_per_epoch)
            continue
        assert ours == pytest.approx(modifier._cyclic_linear(epoch, steps_per_epoch), abs=1e-12), step
        checked += 1
    assert checked >= 0.9 * (end - start) * steps_per_epoch  # nearly every step compared


def test_attention_implementation_reads_what_the_public_setter_set():
    model = make_bert(hidden_size=32)
    for implementation in ("eager", "sdpa", "eager"):
        model.set_attn_implementation(implementation)
        assert seams.attention_implementation(model) == implementation


@pytest.mark.parametrize("batch, accumulation, max_steps", [(4, 1, -1), (8, 3, -1), (4, 1, 5)])
def test_the_trainers_steps_per_epoch_and_max_steps_are_read_from_its_own_count(tmp_path, batch, accumulation,
                                                                              max_steps):
    rows = 48
    args = TrainingArguments(output_dir=str(tmp_path), per_device_train_batch_size=batch, use_cpu=True,
                             gradient_accumulation_steps=accumulation, num_train_epochs=2, max_steps=max_steps,
                             report_to="none")
    trainer = Trainer(model=make_bert(hidden_size=32), args=args, train_dataset=random_qa_dataset(rows))
    dataloader = trainer.get_train_dataloader()
    steps_per_epoch, total = seams.trainer_steps_per_epoch_and_max_steps(
        trainer.set_initial_training_values(args, dataloader))
    expected_per_epoch = -(-(-(-rows // batch)) // accumulation)  # batches rounded up, then accumulation rounded up
    assert steps_per_epoch == max(expected_per_epoch, 1)
    assert total == (max_steps if max_steps > 0 else 2 * steps_per_epoch)


# stop_mixed_precision: tests/test_recipe_modifiers.py trains with bf16 autocast on the CPU and checks that forward
# passes run without it from the step quantization starts, and that no scaler is left.
