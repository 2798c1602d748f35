"""Every place this project reaches past the public API of sparseml, transformers, accelerate or torch, in one
module. Each entry says what it reaches for and why the public API does not serve. WRITTEN_AGAINST holds the
versions they were written against; tests/test_seams.py checks them (and fails loudly on others) and checks each
entry against the library's own behaviour, so an upgrade shows here first.
"""

import torch
from sparseml.pytorch.sparsification import (DistillationModifier, EpochRangeModifier, LayerPruningModifier,
                                             QuantizationModifier)

# Why: sparseml 1.8 has two QuantizationModifier classes, both named so. The public one is the scheme-based one; a
# recipe with the classic settings (submodules, quantize_embeddings, ...) loads as the classic one, which only this
# internal module exports (as LegacyQuantizationModifier). Both are quantization: kinds test against both.
from sparseml.pytorch.sparsification.quantization.modifier_quantization import LegacyQuantizationModifier

# Why: per-channel observers start with placeholder shapes; a QAT model rebuilt before its weights are loaded needs
# them sized first, and sparseml keeps the helper that does it (as its own trainer uses it) off its public API.
from sparseml.pytorch.sparsification.quantization.helpers import initialize_channel_wise_scale_zp  # noqa: F401

# Why: a recipe's `params` patterns must be matched exactly as sparseml matches them ("re:" regexes, plain names) to
# refuse a pattern that matches nothing; sparseml's matcher is not public.
from sparseml.pytorch.utils.helpers import any_str_or_regex_matches_param_name  # noqa: F401

# Why: sparseml evaluates recipe expressions (eval(...)) with its restricted evaluator; to name the one expression
# it cannot evaluate, and to tell an undefined variable from a broken recipe, we need the same evaluator and error.
from sparseml.utils.restricted_eval import UnknownVariableException, restricted_eval  # noqa: F401

# Why: a LayerPruningModifier replaces a removed layer by sparseml's Identity (its public nn module), which passes
# one tensor; an encoder layer must pass the layer's outputs. We find them by this class to swap them.
from sparseml.pytorch.nn import Identity as SparsemlIdentity  # noqa: F401

# Why: a modifier of our own (sparsebert.structured_pruning) must be one of sparseml's to be scheduled by its manager,
# loaded from a recipe's YAML and saved back to recipe.yaml; these are the base class, the YAML registration and the
# property type sparseml's own modifiers are built from, exported from its modifier modules only.
from sparseml.optim import ModifierProp  # noqa: F401
from sparseml.pytorch.sparsification.modifier import PyTorchModifierYAML, ScheduledUpdateModifier  # noqa: F401

WRITTEN_AGAINST = {"sparseml": "1.8.0", "transformers": "5.24.", "accelerate": "1.15.", "torch": "2.13."}


# ---- sparseml: modifier kinds, by class (the classic quantization modifier included) -------------------------------

def is_quantization(modifier) -> bool:
    return isinstance(modifier, (QuantizationModifier, LegacyQuantizationModifier))


def is_scheme_based_quantization(modifier) -> bool:
    """The scheme-based QuantizationModifier, which cannot run on torch 2 (sparsebert.scheme_quantization)."""
    return isinstance(modifier, QuantizationModifier)


def is_layer_pruning(modifier) -> bool:
    return isinstance(modifier, LayerPruningModifier)


def is_epoch_range(modifier) -> bool:
    return isinstance(modifier, EpochRangeModifier)


def is_distillation(modifier) -> bool:
    return isinstance(modifier, DistillationModifier)


# ---- sparseml: its rules, restated where we must know their outcome before it acts ---------------------------------

def sparseml_cyclic_linear(modifier, epoch: float, steps_per_epoch: int) -> float | None:
    """The rate sparseml 1.8's LearningRateFunctionModifier with lr_func cyclic_linear sets at an epoch (None where
    it divides by zero). Why: it misbehaves (negative rates, a division by zero) in ways a run shows only in its log;
    refusing such a recipe before training needs the rate at every step, which sparseml computes only as it steps."""
    span = (modifier.end_epoch - modifier.start_epoch) * steps_per_epoch
    cycle = modifier.cycle_epochs * steps_per_epoch
    current = (epoch - modifier.start_epoch) * steps_per_epoch
    if current > int(span / cycle) * cycle:
        cycle = span % cycle
    if cycle == 0 or cycle == 1:
        return None
    position = current % cycle
    return modifier.init_lr - position / (cycle - 1) * (modifier.init_lr - modifier.final_lr)


def last_update_epoch(modifier, steps_per_epoch: int, steps: int) -> float | None:
    """The epoch of the last update an unbroken run gives `modifier` in its first `steps` optimizer steps, by
    sparseml's rule (its update_ready): the first step at or past start_epoch, then each first step at least
    update_frequency (-1: every step) past the previous update, until the first at or past end_epoch; epochs as
    the step wrapper counts them. None when it has not started by then. Why: a resumed run's pruning modifier has
    never updated in this process, and its masks must be restored as they were at that update (sparseml keeps the
    epoch of its last update in private state that a checkpoint does not hold)."""
    start, end, frequency = modifier.start_epoch, modifier.end_epoch, modifier.update_frequency
    last = None
    for step in range(steps):
        epoch = float(step // steps_per_epoch) + float(step % steps_per_epoch) / float(steps_per_epoch)
        if last is None and not (epoch >= start or start == -1):
            continue  # not started yet
        ends = 0.0 <= end <= epoch
        if last is None or ends or frequency == -1 or epoch >= last + frequency:
            last = epoch
            if ends:
                break  # that update ended it
    return last


# ---- torch: an optimizer that is a view of another ----------------------------------------------------------------

class RecipeOptimizer(torch.optim.Optimizer):
    """The Trainer's optimizer with the recipe's modifiers run around each step.

    Built on the step wrapper that `manager.modify` returns (started at the resumed epoch, so the schedule continues
    where a checkpoint left it); everything but `step` is the wrapped optimizer's own, state_dict included, so
    checkpoints hold the real optimizer state. Why a subclass that skips torch's __init__: the Trainer and torch's
    LR schedulers check isinstance(optimizer, torch.optim.Optimizer), and __init__ would make a second set of
    param_groups and state that are not the ones stepped.
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


# ---- transformers ----------------------------------------------------------------------------------------------------

def attention_implementation(model) -> str | None:
    """The attention the model runs ("sdpa", "eager", ...). Why: transformers 5 has a public setter,
    model.set_attn_implementation, but no getter; the config's private field is where it keeps the answer."""
    return getattr(model.config, "_attn_implementation", None)


def trainer_steps_per_epoch_and_max_steps(values) -> tuple[int, int]:
    """From Trainer.set_initial_training_values' result, the optimizer steps per epoch and the run's max steps.
    Why: the Trainer works them out there (batch size, accumulation, processes, --max_steps all counted) and
    returns them as an unnamed tuple, (num_train_epochs, num_update_steps_per_epoch, ..., max_steps) in 5.x;
    a recipe epoch must be exactly the Trainer's."""
    return values[1], values[-1]


# ---- accelerate ----------------------------------------------------------------------------------------------------

def stop_mixed_precision(accelerator, optimizer):
    """Switch an accelerate run from fp16/bf16 autocast to full precision mid-training (quantization-aware training
    must see full-precision values). Why: accelerate sets its precision once, at prepare(); there is no public way
    to turn autocast and the loss scaler off for the rest of a run. We unwrap the forward (its public
    extract_model_from_parallel, keep_fp32_wrapper=False) and drop the scaler accelerate and its optimizer wrapper
    hold."""
    accelerator.native_amp = False
    accelerator.scaler = None
    if hasattr(optimizer, "scaler"):  # accelerate's optimizer wrapper keeps its own reference
        optimizer.scaler = None
