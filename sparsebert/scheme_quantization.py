"""sparseml 1.8's scheme-based !QuantizationModifier, run as its classic one with the same meaning.

sparseml picks the scheme-based modifier when a recipe gives none of the classic one's own settings (only
start_epoch, disable_quantization_observer_epoch, freeze_bn_stats_epoch, ignore, scheme, scheme_overrides). On
torch 2 it cannot run: it sets an attribute on torch's QConfig, a namedtuple with no room for one. Its meaning for a
BERT-family model is expressible in the classic modifier, which runs (and whose integer export this project
checks): which modules are quantized (Linear layers, embeddings, what `ignore` leaves out), the bits, the symmetry
(weights symmetric, activations not, embeddings' weights not) and per-tensor ranges. A setting whose meaning the
classic modifier cannot carry is refused by name, never dropped:

- a module named in `ignore` (not a type): the classic modifier excludes types only;
- symmetric activations, asymmetric Linear weights, per-channel weights, quantized outputs;
- an Embedding left to the default scheme: that would fake-quantize its input, the token ids; sparseml's own
  recipes override it (`Embedding: {input_activations: null, weights: {num_bits: 8, symmetric: false}}`) or ignore it.
"""

from sparsebert.errors import UsageError
from sparsebert.seams import LegacyQuantizationModifier

# the settings both modifiers share, carried over as they are
_SHARED = ("start_epoch", "disable_quantization_observer_epoch", "freeze_bn_stats_epoch", "num_calibration_steps",
           "model_fuse_fn_name", "model_fuse_fn_kwargs")
EMBEDDING_OVERRIDE = "Embedding: {input_activations: null, weights: {num_bits: 8, symmetric: false}}"


def _bits(arguments, what: str, symmetric: bool, refuse) -> int:
    if arguments.symmetric != symmetric:
        refuse(f"{'symmetric' if arguments.symmetric else 'asymmetric'} {what}")
    if arguments.strategy != "tensor":
        refuse(f"{arguments.strategy} {what} (the classic modifier has per-tensor ranges)")
    return arguments.num_bits


def classic_equivalent(modifier, where: str) -> LegacyQuantizationModifier:
    """The classic QuantizationModifier with the scheme-based one's meaning; a UsageError naming the setting it
    cannot carry. `where` names the recipe in that message."""

    def refuse(what, remedy=""):
        raise UsageError(f"{where}: the scheme-based !QuantizationModifier's {what} has no equivalent in sparseml's "
                         f"classic modifier, the one that runs on torch 2{'; ' + remedy if remedy else ''}")

    ignore = list(modifier.ignore or [])
    named = [entry for entry in ignore if "." in entry]
    if named:
        refuse(f"ignore of the module {named[0]!r} (only module types can be left out)")
    overrides = dict(modifier.scheme_overrides or {})
    scheme = modifier.scheme
    for name, override in overrides.items():
        if override == "default":
            overrides[name] = scheme
        elif name not in ("Linear", "Embedding"):
            if override.input_activations is not None or override.weights is not None:
                refuse(f"scheme_overrides for {name} (only Linear and Embedding, or nothing quantized)")
            ignore.append(name)  # nothing quantized: left out, as `ignore` would
    linear = overrides.get("Linear", scheme)
    if "Linear" in ignore or linear.input_activations is None or linear.weights is None:
        refuse("Linear layers without quantized inputs and weights")
    for name, each in (("scheme", scheme), *overrides.items()):
        if each.output_activations is not None:
            refuse(f"quantized output activations ({name})")
    settings = {name: getattr(modifier, name) for name in _SHARED if getattr(modifier, name, None) is not None}
    settings["activation_bits"] = _bits(linear.input_activations, "activations", False, refuse)
    settings["weight_bits"] = _bits(linear.weights, "Linear weights", True, refuse)
    settings["quantize_linear_activations"] = False  # its Linear outputs are not quantized, its inputs are
    settings["quantize_embedding_activations"] = False  # nor the embeddings' outputs
    embedding = overrides.get("Embedding")
    if "Embedding" in ignore or (embedding is not None and embedding.weights is None):
        settings["quantize_embeddings"] = False
    elif embedding is None or embedding.input_activations is not None:
        refuse("Embedding with quantized inputs (the token ids)",
               f"override it as sparseml's recipes do, `scheme_overrides: {{{EMBEDDING_OVERRIDE}}}`, or ignore it")
    elif _bits(embedding.weights, "Embedding weights", False, refuse) != 8:
        refuse(f"{embedding.weights.num_bits}-bit Embedding weights (the classic modifier's are 8-bit)")
    types = [entry for entry in ignore if entry not in ("Embedding",)]
    if types:
        settings["exclude_module_types"] = types
    return LegacyQuantizationModifier(**settings)
