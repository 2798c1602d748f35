"""The structural units of an encoder, attention heads and feed-forward neurons, and models cut down to the units
they keep.

A head is its rows of the query, key and value projections and its columns of the attention output; a neuron is a
row of the FFN's first Linear and the matching column of its second. Zeroing a unit's weights (its masked form)
removes its contribution exactly, so the masked model computes what the compacted one does.

A compacted model records its widths in its config the transformers way, as `per_layer_config` (each layer's head
count and FFN width) with `head_dim`; `load_compacted` rebuilds it. Plain transformers refuses such a config (its
layers read one global width), so a model with different widths per layer is never loaded wrongly. A model whose
only change is the same FFN width in every layer is an ordinary config (`intermediate_size`) that plain
`from_pretrained` loads.
"""

import copy
import logging
import os
from dataclasses import dataclass

import torch
from safetensors.torch import load_file
from torch import nn

from sparsebert.families import encoder_layers
from sparsebert.layer_dropping import drop_layers

logger = logging.getLogger(__name__)

# family -> where a layer's units are, and the config names of its head count and FFN width
_FAMILIES = {
    "bert": dict(attention="attention.self", q="attention.self.query", k="attention.self.key",
                 v="attention.self.value", out="attention.output.dense", ffn_in="intermediate.dense",
                 ffn_out="output.dense", heads_attr="num_attention_heads", width_attr="intermediate_size"),
    "distilbert": dict(attention="attention", q="attention.q_lin", k="attention.k_lin", v="attention.v_lin",
                       out="attention.out_lin", ffn_in="ffn.lin1", ffn_out="ffn.lin2", heads_attr="n_heads",
                       width_attr="hidden_dim"),
}
_FAMILIES["roberta"] = _FAMILIES["bert"]


@dataclass
class LayerUnits:
    """One encoder layer's Linear modules, by the part they play in its heads and neurons."""
    layer: nn.Module
    query: nn.Linear
    key: nn.Linear
    value: nn.Linear
    attention_out: nn.Linear
    ffn_in: nn.Linear
    ffn_out: nn.Linear
    head_size: int

    @property
    def num_heads(self) -> int:
        return self.query.out_features // self.head_size

    @property
    def num_neurons(self) -> int:
        return self.ffn_in.out_features


def _family(model) -> dict:
    return _FAMILIES[model.config.model_type]


def head_size(config) -> int:
    """The width of one head: recorded (`head_dim`) once heads were removed, else hidden size / heads."""
    recorded = getattr(config, "head_dim", None)
    if recorded:
        return recorded
    family = _FAMILIES[config.model_type]
    hidden = config.dim if config.model_type == "distilbert" else config.hidden_size
    return hidden // getattr(config, family["heads_attr"])


def layer_units(model) -> list[LayerUnits]:
    family = _family(model)
    size = head_size(model.config)
    return [LayerUnits(layer, *(layer.get_submodule(family[part]) for part in ("q", "k", "v", "out", "ffn_in",
                                                                              "ffn_out")), size)
            for layer in encoder_layers(model)]


# ---- masks: which units each layer keeps ---------------------------------------------------------------------

@torch.no_grad()
def apply_masks(model, head_masks: list[torch.Tensor], neuron_masks: list[torch.Tensor]):
    """Zero the weights of every unit a mask drops (True = kept): the unit then contributes exactly nothing."""
    for units, heads, neurons in zip(layer_units(model), head_masks, neuron_masks):
        rows = heads.to(units.query.weight.device).repeat_interleave(units.head_size).to(units.query.weight.dtype)
        for linear in (units.query, units.key, units.value):
            linear.weight.mul_(rows[:, None])
            linear.bias.mul_(rows)
        units.attention_out.weight.mul_(rows[None, :])
        keep = neurons.to(units.ffn_in.weight.device).to(units.ffn_in.weight.dtype)
        units.ffn_in.weight.mul_(keep[:, None])
        units.ffn_in.bias.mul_(keep)
        units.ffn_out.weight.mul_(keep[None, :])


@torch.no_grad()
def masks_from_zeros(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """The units whose weights are not all zero (a checkpoint of a masked model holds its masks this way)."""
    head_masks, neuron_masks = [], []
    for units in layer_units(model):
        per_head = units.attention_out.weight.abs().sum(0).view(units.num_heads, units.head_size).sum(1)
        head_masks.append(per_head.cpu() != 0)
        neuron_masks.append(units.ffn_out.weight.abs().sum(0).cpu() != 0)
    return head_masks, neuron_masks


# ---- compaction ----------------------------------------------------------------------------------------------

def _linear_like(linear: nn.Linear, out_features: int, in_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=linear.bias is not None, device=linear.weight.device,
                     dtype=linear.weight.dtype)


def _resize(units: LayerUnits, model, num_heads: int, num_neurons: int) -> LayerUnits:
    """Put Linear modules of the given widths in the layer's places (weights left to the caller)."""
    family = _family(model)
    widths = {"q": (num_heads * units.head_size, None), "k": (num_heads * units.head_size, None),
              "v": (num_heads * units.head_size, None), "out": (None, num_heads * units.head_size),
              "ffn_in": (num_neurons, None), "ffn_out": (None, num_neurons)}
    for part, (out_features, in_features) in widths.items():
        old = units.layer.get_submodule(family[part])
        new = _linear_like(old, out_features or old.out_features, in_features or old.in_features)
        parent, _, name = family[part].rpartition(".")
        setattr(units.layer.get_submodule(parent), name, new)
    attention = units.layer.get_submodule(family["attention"])
    if hasattr(attention, "n_heads"):  # DistilBERT
        attention.n_heads = num_heads
    else:
        attention.num_attention_heads = num_heads
        attention.all_head_size = num_heads * units.head_size
    return layer_units(model)[list(encoder_layers(model)).index(units.layer)]


@torch.no_grad()
def compact(model, head_masks: list[torch.Tensor], neuron_masks: list[torch.Tensor]):
    """Cut the dropped units out of the weights, drop the layers left with neither heads nor neurons, and record
    the widths in the config. Every kept layer must keep at least one head and one neuron (the selection sees to
    it): a layer with none of one kind has no form transformers' modules can take."""
    model.config.per_layer_config = None  # widths are recorded afresh below (and layer indices may change)
    keep_layers = []
    for index, (units, heads, neurons) in enumerate(zip(layer_units(model), head_masks, neuron_masks)):
        heads, neurons = heads.bool().cpu(), neurons.bool().cpu()
        if not heads.any() and not neurons.any():
            continue
        if not heads.any() or not neurons.any():
            raise ValueError(f"layer {index} keeps {int(heads.sum())} heads and {int(neurons.sum())} neurons: a kept "
                             f"layer needs at least one of each")
        keep_layers.append(index)
        rows = heads.repeat_interleave(units.head_size).nonzero().squeeze(1)
        kept_neurons = neurons.nonzero().squeeze(1)
        old = units
        new = _resize(units, model, int(heads.sum()), int(neurons.sum()))
        for name in ("query", "key", "value"):
            getattr(new, name).weight.copy_(getattr(old, name).weight[rows])
            getattr(new, name).bias.copy_(getattr(old, name).bias[rows])
        new.attention_out.weight.copy_(old.attention_out.weight[:, rows])
        new.attention_out.bias.copy_(old.attention_out.bias)
        new.ffn_in.weight.copy_(old.ffn_in.weight[kept_neurons])
        new.ffn_in.bias.copy_(old.ffn_in.bias[kept_neurons])
        new.ffn_out.weight.copy_(old.ffn_out.weight[:, kept_neurons])
        new.ffn_out.bias.copy_(old.ffn_out.bias)
    if len(keep_layers) < len(encoder_layers(model)):
        logger.info(f"Structured pruning left layers {sorted(set(range(len(head_masks))) - set(keep_layers))} "
                    f"with no heads and no neurons: removed")
        drop_layers(model, keep_layers)
    record_widths(model)
    return model


def layer_widths(model) -> list[tuple[int, int]]:
    """(heads, FFN neurons) of each encoder layer."""
    return [(units.num_heads, units.num_neurons) for units in layer_units(model)]


def record_widths(model):
    """Write the model's widths into its config: `intermediate_size` alone when only the FFN narrowed, the same
    in every layer; otherwise per_layer_config and head_dim."""
    config = model.config
    family = _family(model)
    size = head_size(config)
    widths = layer_widths(model)
    config.per_layer_config = None
    dense_heads = getattr(config, family["heads_attr"])
    if all(heads == dense_heads for heads, _ in widths) and len({n for _, n in widths}) == 1:
        setattr(config, family["width_attr"], widths[0][1])
        return
    config.head_dim = size
    config.per_layer_config = {index: {family["heads_attr"]: heads, family["width_attr"]: neurons}
                               for index, (heads, neurons) in enumerate(widths)}


def config_widths(config) -> list[tuple[int, int]]:
    """(heads, FFN neurons) of each layer, as a config records them."""
    family = _FAMILIES[config.model_type]
    if is_compacted(config):
        return [(getattr(layer, family["heads_attr"]), getattr(layer, family["width_attr"]))
                for layer in config.per_layer_config]
    return [(getattr(config, family["heads_attr"]), getattr(config, family["width_attr"]))] * config.num_hidden_layers


def is_compacted(config) -> bool:
    return bool(getattr(config, "is_heterogeneous", False)) and getattr(config, "head_dim", None) is not None


def empty_model(auto_model_class, config):
    """The model a config describes, weights not loaded: for a compacted config, built at its full widths and then
    cut to the widths it records."""
    def build(config):  # an Auto class, or a model class itself
        return auto_model_class.from_config(config) if hasattr(auto_model_class, "from_config") \
            else auto_model_class(config)

    if not is_compacted(config):
        return build(config)
    family = _FAMILIES[config.model_type]
    widths = config_widths(config)
    full = copy.deepcopy(config)
    full.per_layer_config = None  # the global values are the widths before pruning
    model = build(full)
    for units, (heads, neurons) in zip(layer_units(model), widths):
        _resize(units, model, heads, neurons)
    model.config.per_layer_config = {index: {family["heads_attr"]: h, family["width_attr"]: n}
                                     for index, (h, n) in enumerate(widths)}
    return model


def load_compacted(auto_model_class, folder: str, config):
    """A compacted model from its folder: its structure from the config, then its weights (every one must fit)."""
    model = empty_model(auto_model_class, config)
    state = load_file(os.path.join(folder, "model.safetensors"))
    missing, unexpected = model.load_state_dict(state, strict=False)
    missing = [key for key in missing if not key.endswith("position_ids")]
    if missing or unexpected:
        raise ValueError(f"{folder}: its weights do not fit the widths its config records (missing {missing[:3]}, "
                         f"unexpected {unexpected[:3]})")
    logger.info(f"Loaded {folder} with its pruned widths (heads, FFN neurons per layer): {layer_widths(model)}")
    return model
