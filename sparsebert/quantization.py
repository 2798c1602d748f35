"""INT8 quantization-aware training (sparseml's QuantizationModifier) beyond the training loop: recognising a
fake-quantized model, and rebuilding one from the recipe saved beside it when it is loaded again.

A QAT model's weights are saved under the names of its quantized structure (`...query.module.weight`, observers'
scales and zero points), so from_pretrained alone would load a float model with those weights missing. The
structure comes first, from the recipe's QuantizationModifier, then the weights load into it, all of them.
"""

import logging
import math
import os

import torch
from safetensors import safe_open
from safetensors.torch import load_file
from sparseml.pytorch.optim import ScheduledModifierManager
from sparseml.pytorch.sparsification.quantization.helpers import initialize_channel_wise_scale_zp

from sparsebert.cli import UsageError
from sparsebert.recipe_run import quiet_sparseml_loggers

logger = logging.getLogger(__name__)

RECIPE_NAME = "recipe.yaml"


def is_quantized(model) -> bool:
    """True once a QuantizationModifier has turned the model into its fake-quantized form."""
    return any(getattr(module, "qconfig", None) is not None for module in model.modules())


def quantization_modifiers(manager: ScheduledModifierManager) -> list:
    return [m for m in manager.iter_modifiers() if type(m).__name__ == "QuantizationModifier"]


def freeze_observers(model):
    """Fix the quantization ranges learned in training: evaluation and export must not move them."""
    model.apply(torch.ao.quantization.disable_observer)


def saved_quantization_recipe(folder: str) -> ScheduledModifierManager | None:
    """The recipe saved beside a model whose weights are in quantized form, or None for an ordinary model."""
    recipe = os.path.join(folder, RECIPE_NAME)
    weights = os.path.join(folder, "model.safetensors")
    if not (os.path.isfile(recipe) and os.path.isfile(weights)):
        return None
    with safe_open(weights, framework="pt") as handle:
        if not any(key.endswith("weight_fake_quant.scale") for key in handle.keys()):
            return None
    manager = ScheduledModifierManager.from_yaml(recipe)
    return manager if quantization_modifiers(manager) else None


def load_quantized_model(auto_model_class, folder: str, config, manager: ScheduledModifierManager):
    """Build the model from its config, give it the quantized structure the recipe's QuantizationModifier
    ends with, then load every saved weight, scale and zero point into it."""
    model = auto_model_class.from_config(config)
    for modifier in quantization_modifiers(manager):  # only these: the saved model already lacks dropped layers
        modifier.apply_structure(model, epoch=math.inf, loggers=quiet_sparseml_loggers())
    initialize_channel_wise_scale_zp(model)  # per-channel observers start with placeholder shapes
    state = load_file(os.path.join(folder, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [k for k in missing if not k.endswith("position_ids")]
    if missing or unexpected:
        raise UsageError(f"--model_name_or_path {folder}: its weights do not fit the quantized structure of its "
                         f"{RECIPE_NAME} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    freeze_observers(model)
    logger.info(f"Loaded {folder} as an INT8 quantization-aware model (structure from its {RECIPE_NAME})")
    return model
