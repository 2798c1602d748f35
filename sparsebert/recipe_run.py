"""Driving a sparseml recipe through a Hugging Face training loop: the one place our code meets sparseml's
modifier manager while training.

The manager wants, besides the optimizer step it wraps: the model's structure changed before the optimizer
exists (layer pruning), the student's loss and outputs every step (distillation), a teacher, and a way to sample
gradients (OBS). RecipeRun hands it each of these through sparseml's public API (`apply_structure`, `modify`,
`loss_update`, `finalize`), and tells the Trainer what the recipe takes over (the learning rate).
"""

import inspect
import logging

import torch
from sparseml.pytorch.nn import Identity as SparsemlIdentity
from sparseml.pytorch.optim import ScheduledModifierManager
from sparseml.pytorch.utils import LoggerManager, PythonLogger

logger = logging.getLogger(__name__)

_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")


class RecipeOptimizer(torch.optim.Optimizer):
    """The Trainer's optimizer with the recipe's modifiers run around each step.

    Built on the step wrapper that `manager.modify` returns (started at the resumed epoch, so the schedule continues
    where a checkpoint left it); everything but `step` is the wrapped optimizer's own, state_dict included, so
    checkpoints hold the real optimizer state.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, step_wrapper):  # no super().__init__: we hold no params
        self.__dict__["optimizer"] = optimizer
        self.__dict__["step_wrapper"] = step_wrapper

    def __getattr__(self, name):
        return getattr(self.__dict__["optimizer"], name)

    def __setattr__(self, name, value):
        if name == "step":  # torch's LR schedulers patch step() on the object they are given
            self.__dict__["step"] = value
        else:
            setattr(self.__dict__["optimizer"], name, value)

    @property
    def param_groups(self):
        return self.optimizer.param_groups

    @property
    def state(self):
        return self.optimizer.state

    @property
    def epoch(self) -> float:
        """Where the recipe's schedule is: optimizer steps taken / steps per epoch."""
        return self.step_wrapper.wrapped_epoch

    @property
    def steps_per_epoch(self) -> int:
        return self.step_wrapper.wrapped_steps_per_epoch

    def step(self, closure=None):
        return self.step_wrapper.step(closure)

    def zero_grad(self, set_to_none: bool = True):
        self.optimizer.zero_grad(set_to_none=set_to_none)

    def state_dict(self):
        return self.optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self.optimizer.load_state_dict(state_dict)

    def add_param_group(self, param_group):
        self.optimizer.add_param_group(param_group)

    def __repr__(self):
        return f"RecipeOptimizer({self.optimizer!r})"


class SkippedLayer(torch.nn.Module):
    """An encoder layer removed by a recipe's LayerPruningModifier: passes the hidden states through.

    sparseml swaps in its own Identity, which returns every positional argument as a tuple; transformers 5's
    encoders pass the attention mask positionally too, so that Identity would hand a tuple to the next layer."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


class RecipeRun:
    """One training run of a recipe: sparseml's manager plus what it needs from the training loop.

    teacher: the frozen model the recipe's DistillationModifier distills from (None when it has none).
    """

    def __init__(self, manager: ScheduledModifierManager, recipe_path: str, teacher=None):
        self.manager = manager
        self.recipe_path = recipe_path
        self.teacher = teacher
        self.optimizer = None

    @property
    def owns_learning_rate(self) -> bool:
        return bool(self.manager.learning_rate_modifiers)

    @property
    def distills(self) -> bool:
        return bool(self.manager.distillation_modifiers)

    def apply_structure(self, model, epoch: float = 0.0):
        """Structural modifiers (layer pruning) act now, before the optimizer is built over the parameters."""
        self.manager.apply_structure(model, epoch=epoch)
        skipped = replace_identity_layers(model)
        if skipped:
            kept = len(encoder_layer_list(model)) - len(skipped)
            logger.info(f"Recipe layer pruning: encoder layers {skipped} removed, {kept} kept")

    def wrap_optimizer(self, optimizer, model, steps_per_epoch: int, start_epoch: float, grad_sampler=None):
        """Initialize the modifiers at start_epoch (0, or where a resumed checkpoint stopped) and wrap the
        optimizer so each step runs them."""
        kwargs = {"loggers": quiet_sparseml_loggers()}
        if self.teacher is not None:
            kwargs["distillation_teacher"] = self.teacher
        if grad_sampler is not None:
            kwargs["grad_sampler"] = grad_sampler
        step_wrapper = self.manager.modify(model, optimizer, steps_per_epoch=steps_per_epoch, epoch=start_epoch,
                                           **kwargs)
        self.optimizer = RecipeOptimizer(optimizer, step_wrapper)
        if start_epoch:
            logger.info(f"Recipe schedule resumed at epoch {start_epoch:.4f} ({round(start_epoch * steps_per_epoch)} "
                        f"optimizer steps)")
        return self.optimizer

    def loss_update(self, loss, model, outputs, inputs):
        """The recipe's say on the loss (its DistillationModifier mixes in the teacher's); before backward."""
        if self.optimizer is None:
            return loss
        student_inputs = {k: v for k, v in inputs.items() if k in _MODEL_INPUTS or k in _forward_arguments(model)}
        teacher_inputs = {k: v for k, v in inputs.items() if k in _MODEL_INPUTS}
        return self.manager.loss_update(loss, model, self.optimizer.optimizer, self.optimizer.epoch,
                                        self.optimizer.steps_per_epoch, student_outputs=outputs,
                                        student_inputs=student_inputs, teacher_inputs=teacher_inputs)

    def finalize(self, model):
        """Detach the modifiers' hooks from the model; pruned zeros stay in the weights."""
        if self.manager.initialized:
            self.manager.finalize(model)


def encoder_layer_list(model) -> torch.nn.ModuleList | None:
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    return layers if isinstance(layers, torch.nn.ModuleList) else None


def replace_identity_layers(model) -> list[int]:
    """Put a SkippedLayer wherever layer pruning left sparseml's Identity; returns those layer indices."""
    layers = encoder_layer_list(model)
    if layers is None:
        return []
    skipped = []
    for index, layer in enumerate(layers):
        if isinstance(layer, (SparsemlIdentity, SkippedLayer)):
            if not isinstance(layer, SkippedLayer):
                layers[index] = SkippedLayer()
            skipped.append(index)
    return skipped


def quiet_sparseml_loggers():
    """Route the modifiers' own logs to a debug-level Python logger: sparseml's default would write log
    files into a sparse_logs/ folder in the working directory."""
    return LoggerManager([PythonLogger(logger=logging.getLogger("sparseml.modifiers"))], log_python=False)


def _forward_arguments(model) -> set[str]:
    return set(inspect.signature(model.forward).parameters)
