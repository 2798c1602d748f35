"""Layer dropping: keep N of a model's encoder layers before training (the seed's other way to shrink BERT), or
the layers a recipe's LayerPruningModifier removes."""

import logging

import torch

from sparsebert.errors import UsageError
from sparsebert.families import encoder_layers, layer_list_owner

logger = logging.getLogger(__name__)

# The seed's choice for 12-layer BERT: the first and last layers with evenly spread ones between.
SEED_LAYERS_FOR_12 = {
    1: [0],
    3: [0, 5, 11],
    6: [0, 2, 4, 6, 8, 11],
    9: [0, 2, 3, 4, 5, 7, 8, 9, 11],
}
SELECTIONS = ("seed", "evenly_spaced", "first")


def select_layers(num_layers: int, keep: int, selection: str = "seed") -> list[int]:
    """Indices of the encoder layers to keep."""
    if selection not in SELECTIONS:
        raise UsageError(f"`layer_selection` {selection}: choose one of {', '.join(SELECTIONS)}")
    if not 1 <= keep <= num_layers:
        raise UsageError(f"`layers_to_keep` {keep}: the model has {num_layers} encoder layers")
    if selection == "first":
        return list(range(keep))
    if selection == "seed" and num_layers == 12 and keep in SEED_LAYERS_FOR_12:
        return list(SEED_LAYERS_FOR_12[keep])
    if keep == 1:
        return [0]
    return sorted({round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)})


def drop_layers(model, keep: list[int]):
    """Keep only the given encoder layers, renumbered, and record the new depth in the config so the saved
    model reloads (the seed left num_hidden_layers at 12)."""
    layers = encoder_layers(model)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    layer_list_owner(model).layer = kept
    model.config.num_hidden_layers = len(keep)  # DistilBERT's config maps it onto its own n_layers
    return model


class SkippedLayer(torch.nn.Module):
    """An encoder layer removed by a recipe's LayerPruningModifier: passes the hidden states through.

    sparseml swaps in its own Identity, which returns every positional argument as a tuple; transformers 5's
    encoders pass the attention mask positionally too, so that Identity would hand a tuple to the next layer."""

    def forward(self, hidden_states, *args, **kwargs):
        return hidden_states


def check_whole_layers(model, names, recipe_path: str):
    """A LayerPruningModifier may only name whole encoder layers (anything else would be replaced by a
    pass-through that does not fit where it sits)."""
    layers = encoder_layers(model)
    layer_names = {name for name, module in model.named_modules() if any(module is layer for layer in layers)}
    for name in [names] if isinstance(names, str) else names:
        if name not in layer_names:
            example = sorted(layer_names)[0] if layer_names else "bert.encoder.layer.0"
            raise UsageError(f"`nm_prune_config` {recipe_path}: !LayerPruningModifier layer {name!r} is not an encoder "
                             f"layer of this model (they are named like {example!r})")


def replace_identity_layers(model) -> list[int]:
    """Put a SkippedLayer wherever layer pruning left sparseml's Identity; returns those layer indices."""
    from sparsebert.seams import SparsemlIdentity

    layers = encoder_layers(model)
    skipped = []
    for index, layer in enumerate(layers):
        if isinstance(layer, SparsemlIdentity):
            layers[index] = SkippedLayer()
        if isinstance(layers[index], SkippedLayer):
            skipped.append(index)
    return skipped


def remove_skipped_layers(model):
    """Before saving: take the recipe's removed layers out for good, so the saved model is an ordinary
    shallower one whose config holds its real depth."""
    layers = encoder_layers(model)
    keep = [i for i, layer in enumerate(layers) if not isinstance(layer, SkippedLayer)]
    if len(keep) < len(layers):
        drop_layers(model, keep)
    return model


def drop_layers_if_asked(model, model_args):
    if model_args.layers_to_keep is None:
        return model
    num_layers = len(encoder_layers(model))
    keep = select_layers(num_layers, model_args.layers_to_keep, model_args.layer_selection)
    before = sum(p.numel() for p in model.parameters())
    drop_layers(model, keep)
    after = sum(p.numel() for p in model.parameters())
    logger.info(f"Layer dropping: kept encoder layers {keep} of {num_layers} ({model_args.layer_selection}); "
                f"parameters {before:,} -> {after:,}")
    return model
