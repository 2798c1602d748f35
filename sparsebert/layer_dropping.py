"""Layer dropping: keep N of a model's encoder layers before training (the seed's other way to shrink BERT)."""

import logging

import torch

from sparsebert.cli import UsageError

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
        raise UsageError(f"--layer_selection {selection}: choose one of {', '.join(SELECTIONS)}")
    if not 1 <= keep <= num_layers:
        raise UsageError(f"--layers_to_keep {keep}: the model has {num_layers} encoder layers")
    if selection == "first":
        return list(range(keep))
    if selection == "seed" and num_layers == 12 and keep in SEED_LAYERS_FOR_12:
        return list(SEED_LAYERS_FOR_12[keep])
    if keep == 1:
        return [0]
    return sorted({round(i * (num_layers - 1) / (keep - 1)) for i in range(keep)})


def encoder_layers(model) -> torch.nn.ModuleList:
    encoder = getattr(model.base_model, "encoder", None)
    layers = getattr(encoder, "layer", None)
    if not isinstance(layers, torch.nn.ModuleList):
        raise UsageError(f"--layers_to_keep: cannot find the encoder layers of a {type(model).__name__}")
    return layers


def drop_layers(model, keep: list[int]):
    """Keep only the given encoder layers, renumbered, and record the new depth in the config so the saved
    model reloads (the seed left num_hidden_layers at 12)."""
    layers = encoder_layers(model)
    kept = torch.nn.ModuleList([layers[i] for i in keep])
    for new_index, layer in enumerate(kept):
        for module in layer.modules():
            if hasattr(module, "layer_idx"):
                module.layer_idx = new_index
    model.base_model.encoder.layer = kept
    model.config.num_hidden_layers = len(keep)
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
