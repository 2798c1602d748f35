"""Driving a sparseml recipe through a Hugging Face training loop: the one place our code meets sparseml's
modifier manager while training.

The manager wants, besides the optimizer step it wraps: the model's structure changed before the optimizer
exists (layer pruning), the student's loss and outputs every step (distillation), a teacher, and a way to sample
gradients (OBS). RecipeRun hands it each of these through sparseml's public API (`apply_structure`, `modify`,
`loss_update`, `finalize`; `scheduled_update` to restart a pruning schedule where a checkpoint left it), and tells
the Trainer what the recipe takes over (the learning rate).
"""

import inspect
import logging

import psutil
import torch
from sparseml.pytorch.optim import ScheduledModifierManager
from sparseml.pytorch.sparsification import BasePruningModifier, OBSPruningModifier
from torch.utils.data import DataLoader

from sparsebert.errors import UsageError
from sparsebert.families import TEACHER_INPUTS, encoder_layers
from sparsebert.layer_dropping import (check_whole_layers, remove_skipped_layers,
                                       replace_identity_layers)
from sparsebert.quantization import install_quantizable_attention, quantization_modifiers
from sparsebert.recipe import modifier_parameter_names, quiet_sparseml_loggers
from sparsebert.seams import RecipeOptimizer, is_layer_pruning, last_update_epoch
from sparsebert.structure import compact, layer_widths
from sparsebert.structured_pruning import structured_pruning_modifiers

logger = logging.getLogger(__name__)



class RecipeLearningRate(torch.optim.lr_scheduler.LRScheduler):
    """The Trainer's scheduler when the recipe owns the learning rate: it changes nothing (as sparseml's trainer
    did), and reports the rate the recipe set for the step just taken, which is what the Trainer logs."""

    def get_lr(self):
        return [group["lr"] for group in self.optimizer.param_groups]

    def get_last_lr(self):
        return self.get_lr()


class RecipeRun:
    """One training run of a recipe: sparseml's manager plus what it needs from the training loop.

    teacher: the frozen model the recipe's DistillationModifier distills from (None when it has none).
    quantize_attention: with a QuantizationModifier, quantize attention's two matrix products too, not only the
    Linear layers.
    """

    def __init__(self, manager: ScheduledModifierManager, recipe_path: str, teacher=None, quantize_attention=True):
        self.manager = manager
        self.recipe_path = recipe_path
        self.teacher = teacher
        self.quantize_attention = quantize_attention
        self.optimizer = None

    @property
    def owns_learning_rate(self) -> bool:
        return bool(self.manager.learning_rate_modifiers)

    @property
    def distills(self) -> bool:
        return bool(self.manager.distillation_modifiers)

    def apply_structure(self, model):
        """Before the Trainer and its optimizer exist: the layers the recipe removes go, and with a
        QuantizationModifier the attention gets its quantizable matmuls (plain matmuls until QAT starts)."""
        if self.quantize_attention and quantization_modifiers(self.manager):
            changed = install_quantizable_attention(model)
            logger.info(f"Quantization-aware training will quantize the attention matmuls of {changed} layers too")
        layer_pruners = [m for m in self.manager.iter_modifiers() if is_layer_pruning(m)]
        for modifier in layer_pruners:
            check_whole_layers(model, modifier.layers, self.recipe_path)
            modifier.apply_structure(model, epoch=0.0, loggers=quiet_sparseml_loggers())
        for modifier in structured_pruning_modifiers(self.manager):
            try:
                modifier.check_model(model)
            except ValueError as err:
                raise UsageError(f"`nm_prune_config` {self.recipe_path}: !StructuredPruningModifier: {err}") from err
        if layer_pruners:
            skipped = replace_identity_layers(model)
            kept = len(encoder_layers(model)) - len(skipped)
            logger.info(f"Recipe layer pruning: encoder layers {skipped} removed, {kept} kept")

    def initialize(self, model, epoch: float, grad_sampler=None):
        """Initialize every modifier at `epoch` (0, or where a resumed checkpoint stopped); return the parameters
        the pruning modifiers took in charge.

        Quantization comes last: the others find their parameters by the names the recipe gives (`...query.weight`)
        before quantization wraps the layers (`...query.module.weight`; the parameters stay the same objects). A run
        resumed past the start of QAT thus has its quantized structure before the checkpoint's weights load."""
        kwargs = self._initialize_kwargs(grad_sampler)
        quantizers = quantization_modifiers(self.manager)
        for modifier in self.manager.iter_modifiers():
            if modifier not in quantizers and not modifier.initialized:
                modifier.initialize(model, epoch, **kwargs)
        pruned = self.pruned_parameters(model)
        self.manager.initialize(model, epoch, **kwargs)  # the rest: the quantization modifiers
        return pruned

    def pruned_parameters(self, model) -> list:
        """The parameters the initialized pruning modifiers hold masks for, as sparseml resolved them (their
        state_dict has a `<parameter name>.sparsity_mask` per parameter): what the sparsity report covers."""
        params = dict(model.named_parameters())
        names = [key.removesuffix(".sparsity_mask") for modifier in self.manager.pruning_modifiers
                 for key in modifier.state_dict()]
        return [params[name] for name in dict.fromkeys(names) if name in params]

    def _initialize_kwargs(self, grad_sampler=None) -> dict:
        kwargs = {"loggers": quiet_sparseml_loggers()}
        if self.teacher is not None:
            kwargs["distillation_teacher"] = self.teacher
        if grad_sampler is not None:
            kwargs["grad_sampler"] = grad_sampler
        return kwargs

    @property
    def gradient_samplers(self) -> list:
        """The modifiers that score with gradients sampled from the training set: OBS, and structured pruning's
        taylor and fisher scores."""
        return self._obs_modifiers + [m for m in structured_pruning_modifiers(self.manager) if m.needs_gradients]

    @property
    def _obs_modifiers(self) -> list:
        return [m for m in self.manager.iter_modifiers() if isinstance(m, OBSPruningModifier)]

    def check_fisher_memory(self, model, device):
        """OBS keeps a block of the inverse Fisher per weight: prunable weights x fisher_block_size x 4 bytes.
        Refuse before training what would not fit, rather than fail at the first pruning step. (Structured scores
        keep one number per head and neuron.)"""
        needed = 0
        for modifier in self._obs_modifiers:
            names = set(modifier_parameter_names(modifier, model, self.recipe_path))
            weights = sum(p.numel() for n, p in model.named_parameters() if n in names)
            needed += weights * modifier.fisher_block_size * 4
        if not needed:
            return
        device = torch.device(device)
        if device.type == "cuda":
            free, where = torch.cuda.mem_get_info(device)[0], f"free on {device}"
        else:
            free, where = psutil.virtual_memory().available, "available"
        logger.info(f"OBS: the inverse Fisher blocks take {needed / 2**30:.2f} GiB ({free / 2**30:.1f} GiB {where})")
        if needed > free:
            raise UsageError(f"`nm_prune_config` {self.recipe_path}: OBS needs {needed / 2**30:.2f} GiB for its "
                             f"inverse Fisher blocks (prunable weights x fisher_block_size x 4 bytes) but only "
                             f"{free / 2**30:.2f} GiB is {where}: lower fisher_block_size or prune fewer parameters")

    def wrap_optimizer(self, optimizer, model, steps_per_epoch: int, start_epoch: float, grad_sampler=None):
        """Wrap the optimizer so each step runs the modifiers, the schedule starting at start_epoch (0, or where a
        resumed checkpoint stopped); modifiers not initialized yet are, with grad_sampler for OBS."""
        step_wrapper = self.manager.modify(model, optimizer, steps_per_epoch=steps_per_epoch, epoch=start_epoch,
                                           **self._initialize_kwargs(grad_sampler))
        self.optimizer = RecipeOptimizer(optimizer, step_wrapper)
        if start_epoch:
            resumed_steps = round(start_epoch * steps_per_epoch)
            logger.info(f"Recipe schedule resumed at epoch {start_epoch:.4f} ({resumed_steps} optimizer steps)")
            self._restart_pruning_schedules(model, optimizer, steps_per_epoch, resumed_steps)
        return self.optimizer

    def _restart_pruning_schedules(self, model, optimizer, steps_per_epoch: int, resumed_steps: int):
        """sparseml times a pruning modifier's updates from the step it started at. Left to itself, a resumed run
        starts it at the resumed step: an extra pruning step there, ahead of the recipe's sparsity (for OBS, an
        extra round of gradient sampling too), and every later step shifted. Start each one instead at the last
        step an unbroken run updated it: the checkpoint's zeros are that step's mask, so pruning again to that
        step's sparsity takes them and nothing else, and the next updates fall where the recipe puts them."""
        for modifier in self.manager.pruning_modifiers:
            if not isinstance(modifier, BasePruningModifier) or modifier.started:  # (not layer pruning: no masks)
                continue
            epoch = last_update_epoch(modifier, steps_per_epoch, resumed_steps)
            if epoch is None:  # it starts after the resumed step
                continue
            logger.info(f"{type(modifier).__name__}: masks restored from the checkpoint's zeros, as its update at "
                        f"epoch {epoch:.4f} left them")
            modifier.scheduled_update(model, optimizer, epoch, steps_per_epoch)

    def loss_update(self, loss, model, outputs, inputs):
        """The recipe's say on the loss (its DistillationModifier mixes in the teacher's); before backward."""
        if self.optimizer is None:
            return loss
        student_inputs = {k: v for k, v in inputs.items() if k in TEACHER_INPUTS or k in _forward_arguments(model)}
        teacher_inputs = {k: v for k, v in inputs.items() if k in TEACHER_INPUTS}
        # the logits only (a distillation modifier without distill_output_keys matches every output it is given;
        # the teacher, fed no labels, has no loss), in the output class the teacher's outputs have too
        logits = type(outputs)(**{k: v for k, v in outputs.items() if k != "loss"}) if "loss" in outputs else outputs
        return self.manager.loss_update(loss, model, self.optimizer.optimizer, self.optimizer.epoch,
                                        self.optimizer.steps_per_epoch, student_outputs=logits,
                                        student_inputs=student_inputs, teacher_inputs=teacher_inputs)

    def finalize(self, model):
        """Detach the modifiers' hooks from the model (pruned zeros stay in the weights), take the layers the
        recipe removed out of the model for good, so it saves as an ordinary shallower one, and cut the heads and
        neurons structured pruning removed out of the weights (the config records the widths left)."""
        if self.manager.initialized:
            self.manager.finalize(model)
        remove_skipped_layers(model)
        for modifier in structured_pruning_modifiers(self.manager):
            if modifier.masks is not None:
                compact(model, *modifier.masks)
                logger.info(f"Compacted to (heads, FFN neurons) per layer: {layer_widths(model)}")


def gradient_sampler(model, dataset, collate_fn, num_grads: int):
    """sparseml's grad_sampler for OBS: batches from a plain shuffled DataLoader over the training set, endlessly,
    and the model's own loss. (sparseml's trainer cloned the Trainer's accelerate loader instead, which fails:
    sparseml issue #2358.) The batch size comes from the recipe's grad_sampler_kwargs."""
    accepted = _forward_arguments(model) | {"label", "labels", "label_ids"}
    dataset = dataset.remove_columns([c for c in dataset.column_names if c not in accepted])
    report_every = max(1, num_grads // 4)

    def data_loader_builder(kwargs=None):
        kwargs = dict(kwargs or {})
        loader = DataLoader(dataset, batch_size=kwargs.pop("batch_size", 8), shuffle=True, collate_fn=collate_fn,
                            **kwargs)
        sampled = 0
        while True:
            for batch in loader:
                sampled += 1
                if sampled % report_every == 0:
                    logger.info(f"OBS gradient sampling: {(sampled - 1) % num_grads + 1}/{num_grads} gradients")
                device = next(model.parameters()).device
                yield [], {k: v.to(device) for k, v in batch.items()}, None

    def loss_function(outputs, target):
        return outputs["loss"] if isinstance(outputs, dict) else outputs[0]

    return {"data_loader_builder": data_loader_builder, "loss_function": loss_function}


def _forward_arguments(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)
