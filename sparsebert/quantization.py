"""INT8 quantization-aware training (sparseml's QuantizationModifier) beyond the training loop: recognising a
fake-quantized model, quantizable attention, and rebuilding a quantized model from the recipe saved beside it.

sparseml quantizes Linear layers (and embeddings); the two matrix products inside attention (query x key, then
probabilities x value) are plain torch.matmul calls, which it patched for quantization only in transformers 4.
Here they run as QuantizableMatMul modules, through an attention implementation registered with transformers'
AttentionInterface, so QAT fake-quantizes their inputs and the export turns them into integer MatMuls too.

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
from torch import nn
from transformers import AttentionInterface
from transformers.masking_utils import AttentionMaskInterface, eager_mask

from sparsebert.errors import UsageError
from sparsebert.recipe import load_recipe, quiet_sparseml_loggers
from sparsebert.seams import initialize_channel_wise_scale_zp, is_quantization
from sparsebert.structure import empty_model

logger = logging.getLogger(__name__)

RECIPE_NAME = "recipe.yaml"
ATTENTION = "sparsebert_quantizable"  # the attention implementation with quantizable matmuls
FLOAT32_ROUNDING = 2.0 ** -23  # one float32 rounding step, relative to the value rounded


class QuantizableMatMul(nn.Module):
    """torch.matmul with each input behind a QuantStub: QAT gives the stubs fake-quantize observers, and the
    export sees quantized inputs to a MatMul, which it turns into MatMulInteger. Before QAT it is torch.matmul."""

    def __init__(self):
        super().__init__()
        self.left_quant = torch.ao.quantization.QuantStub()
        self.right_quant = torch.ao.quantization.QuantStub()

    def forward(self, left, right):
        return torch.matmul(self.left_quant(left), self.right_quant(right))


def quantizable_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """transformers' eager attention, its two products done by the module's QuantizableMatMuls."""
    if scaling is None:
        scaling = query.size(-1) ** -0.5
    scores = module.scores_matmul(query, key.transpose(2, 3)) * scaling
    if attention_mask is not None:
        scores = scores + attention_mask
    probabilities = nn.functional.dropout(nn.functional.softmax(scores, dim=-1), p=dropout, training=module.training)
    output = module.context_matmul(probabilities, value).transpose(1, 2).contiguous()
    return output, probabilities


def install_quantizable_attention(model) -> int:
    """Give every self-attention module its two QuantizableMatMuls and switch the model to the attention that
    uses them; returns how many attention modules were changed (0: none found, the model is left as it was)."""
    projections = (("query", "key", "value"), ("q_lin", "k_lin", "v_lin"))  # BERT and RoBERTa, DistilBERT
    attention_modules = [m for m in model.modules() if any(
        all(isinstance(getattr(m, name, None), nn.Linear) for name in names) for names in projections)]
    if not attention_modules:
        return 0
    AttentionInterface.register(ATTENTION, quantizable_attention)
    AttentionMaskInterface.register(ATTENTION, eager_mask)  # the additive mask eager attention takes
    for module in attention_modules:
        module.scores_matmul = QuantizableMatMul()
        module.context_matmul = QuantizableMatMul()
    model.set_attn_implementation(ATTENTION)
    return len(attention_modules)


def is_quantized(model) -> bool:
    """True once a QuantizationModifier has turned the model into its fake-quantized form."""
    return any(getattr(module, "qconfig", None) is not None for module in model.modules())


def nudge_rounding(model, relative: float = FLOAT32_ROUNDING, seed: int = 0) -> list:
    """Make every activation fake-quantizer of the model see its input times (1 + relative x N(0, 1)): the model as
    an engine that sums in another order computes it. Returns the hook handles (remove them to undo).

    A quantized model can be sensitive to that much: a value on the other side of a rounding boundary moves a whole
    quantization step, and the layers after pass it on. A SQuAD MiniLM after QAT, so nudged, gives another answer
    to 6% of 1,000 dev questions, as many as onnxruntime and DeepSparse running its integer export do (5.9%, 6.1%).
    What the nudged model answers is the model's own floor, against which an engine's agreement with it is judged.
    """
    generator = torch.Generator().manual_seed(seed)

    def nudge(module, inputs):
        value = inputs[0]
        return (value * (1 + relative * torch.randn(value.shape, generator=generator).to(value)),)

    return [module.register_forward_pre_hook(nudge) for name, module in model.named_modules()
            if isinstance(module, torch.ao.quantization.FakeQuantizeBase) and not name.endswith("weight_fake_quant")]


def quantization_modifiers(manager: ScheduledModifierManager) -> list:
    return [m for m in manager.iter_modifiers() if is_quantization(m)]


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
    manager = load_recipe(recipe)
    return manager if quantization_modifiers(manager) else None


def _disable_unsaved_fixed_range_quantizers(model, saved_keys) -> list[str]:
    """torch gives a Tanh (the classifier pooler's) a fake-quantizer of fixed range (scale 2/256 for [-1, 1]).
    In training it does not act and its buffers are not saved; rebuilt from the recipe it would act. Switch off
    each one the saved file lacks, so the reloaded model computes what the trained one did; returns their keys."""
    unsaved = []
    for name, module in model.named_modules():
        if isinstance(module, torch.ao.quantization.FixedQParamsFakeQuantize):
            keys = [f"{name}.{key}" for key in module.state_dict()]
            if not any(key in saved_keys for key in keys):
                module.disable_fake_quant()
                unsaved += keys
    return unsaved


def load_quantized_model(auto_model_class, folder: str, config, manager: ScheduledModifierManager):
    """Build the model from its config, give it the quantized structure the recipe's QuantizationModifier
    ends with, then load every saved weight, scale and zero point into it."""
    model = empty_model(auto_model_class, config)  # (a structurally pruned model at its own widths)
    state = load_file(os.path.join(folder, "model.safetensors"))
    if any(".scores_matmul." in key for key in state):  # trained with quantizable attention
        install_quantizable_attention(model)
    for modifier in quantization_modifiers(manager):  # only these: the saved model already lacks dropped layers
        modifier.apply_structure(model, epoch=math.inf, loggers=quiet_sparseml_loggers())
    initialize_channel_wise_scale_zp(model)  # per-channel observers start with placeholder shapes
    missing, unexpected = model.load_state_dict(state, strict=False)
    unsaved = set(_disable_unsaved_fixed_range_quantizers(model, state))
    missing = [k for k in missing if not k.endswith("position_ids") and k not in unsaved]
    if missing or unexpected:
        raise UsageError(f"`model_name_or_path` {folder}: its weights do not fit the quantized structure of its "
                         f"{RECIPE_NAME} (missing {missing[:3]}, unexpected {unexpected[:3]})")
    freeze_observers(model)
    logger.info(f"Loaded {folder} as an INT8 quantization-aware model (structure from its {RECIPE_NAME})")
    return model
