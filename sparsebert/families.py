"""The encoder families the scripts run, and where they differ: where the layers are, which inputs the
tokenizer gives. BERT (MiniLM and other BERT-architecture models included), RoBERTa and DistilBERT; another
model type is refused by name rather than half handled.

What they share is what the shipped recipes rely on: six weight matrices per layer, the same in each family
under its own names (BERT and RoBERTa `attention.self.query`, DistilBERT `attention.q_lin`, ...).
"""

import inspect

import torch

from sparsebert.errors import UsageError

SUPPORTED_MODEL_TYPES = ("bert", "roberta", "distilbert")
MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids")  # the order of an exported file's inputs
TEACHER_INPUTS = MODEL_INPUTS + ("position_ids",)  # what a batch may hand a teacher (the rest: labels, ...)
_LAYER_LISTS = (("encoder", "layer"), ("transformer", "layer"))  # below model.base_model: BERT/RoBERTa, DistilBERT


def check_supported(config, setting: str, name: str):
    if config.model_type not in SUPPORTED_MODEL_TYPES:
        raise UsageError(f"{setting} {name}: model type {config.model_type!r} is not supported (supported: "
                         f"{', '.join(SUPPORTED_MODEL_TYPES)}; MiniLM and other BERT-architecture models are bert)")


def layer_list_owner(model) -> torch.nn.Module:
    """The module whose `layer` attribute is the list of encoder layers."""
    for owner_name, list_name in _LAYER_LISTS:
        owner = getattr(model.base_model, owner_name, None)
        if isinstance(getattr(owner, list_name, None), torch.nn.ModuleList):
            return owner
    raise UsageError(f"cannot find the encoder layers of a {type(model).__name__} (supported model types: "
                     f"{', '.join(SUPPORTED_MODEL_TYPES)})")


def encoder_layers(model) -> torch.nn.ModuleList:
    return layer_list_owner(model).layer


def input_names(tokenizer, model=None) -> list[str]:
    """The model inputs this tokenizer produces (no token_type_ids for RoBERTa's and DistilBERT's), in file order;
    with a model, only those its forward names: a DistilBERT saved with a BERT tokenizer gets token_type_ids from
    it and ignores them, so its exported file has no such input."""
    names = [name for name in MODEL_INPUTS if name in tokenizer.model_input_names]
    if model is not None:
        accepted = inspect.signature(model.forward).parameters
        names = [name for name in names if name in accepted]
    return names
