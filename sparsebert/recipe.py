"""SparseML recipes: loading with clear errors (YAML, or Markdown with YAML front matter as sparseml publishes
them), refusing modifiers we cannot run, checking them against a model, deciding the training length, and saving
the recipe used next to the model."""

import ast
import dataclasses
import json
import logging
import math
import os
import re
import shutil

import yaml
from sparseml.pytorch.optim import ScheduledModifierManager
from sparseml.pytorch.utils import LoggerManager, PythonLogger

from sparsebert.errors import UsageError
from sparsebert.seams import (UnknownVariableException, any_str_or_regex_matches_param_name, is_epoch_range,
                              is_layer_pruning, is_quantization, is_scheme_based_quantization, restricted_eval,
                              sparseml_cyclic_linear)
# importing it registers !StructuredPruningModifier with sparseml's YAML
from sparsebert.structured_pruning import StructuredPruningModifier

logger = logging.getLogger(__name__)

RECIPE = "`nm_prune_config`"
# sparseml keywords that select parameters by kind instead of by name
_PARAM_KEYWORDS = ("__ALL__", "__ALL_PRUNABLE__")

# The modifiers our training loop drives, with what each needs from the user (README, "Recipes from sparseml").
# Anything else is refused by name: a modifier the loop does not feed would run half or not at all.
SUPPORTED_MODIFIERS = {
    "EpochRangeModifier": "sets the training length",
    "GMPruningModifier": "",
    "MagnitudePruningModifier": "",
    "GlobalMagnitudePruningModifier": "",
    "MovementPruningModifier": "",
    "OBSPruningModifier": "gradient samples from the training set (memory: prunable weights x fisher_block_size "
                          "x 4 bytes)",
    "ConstantPruningModifier": "an already sparse model (keeps its zeros)",
    "LayerPruningModifier": "whole encoder layers, removed for good (end_epoch -1)",
    "LearningRateFunctionModifier": "owns the learning rate",
    "SetLearningRateModifier": "owns the learning rate",
    "SetWeightDecayModifier": "",
    "DistillationModifier": "a teacher: `teacher_model_name_or_path` (or `distill_teacher`)",
    "StructuredPruningModifier": "ours (sparsebert/structured_pruning.py): whole heads and FFN neurons, cut out of "
                                 "the saved model; gradient samples from the training set for its taylor and fisher "
                                 "scores",
    "QuantizationModifier": "INT8 quantization-aware training; the saved model reloads with its recipe.yaml, "
                            "`do_onnx_export` writes integer ops",
}


def load_recipe(path: str, variables: dict | None = None) -> ScheduledModifierManager:
    """Build the modifier manager from a recipe file, turning every way it can be broken into a UsageError."""
    # sparseml takes a string that is not a file for raw YAML: a typo in the path must not become a recipe
    if not os.path.isfile(path):
        raise UsageError(f"{RECIPE} {path}: no such file")
    check_supported_modifiers(path)
    try:
        manager = ScheduledModifierManager.from_yaml(path, recipe_variables=variables or None)
    except yaml.constructor.ConstructorError as err:
        line = err.problem_mark.line + 1 if err.problem_mark else "?"
        if "could not determine a constructor" in str(err.problem):
            tag = (err.problem.split("tag '")[-1].rstrip("'")).replace("!pytorch.", "!")
            raise UsageError(f"{RECIPE} {path}: unknown modifier {tag} (line {line})") from err
        raise UsageError(f"{RECIPE} {path}: {err.problem} (line {line})") from err
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(err, "problem", None) or str(err)
        raise UsageError(f"{RECIPE} {path}: not valid YAML ({where}{problem})") from err
    except UnknownVariableException as err:
        raise UsageError(f"{RECIPE} {path}: {err} (define it at the top of the recipe or pass `recipe_args`)") from err
    except (RuntimeError, AttributeError) as err:  # sparseml's restricted eval meets what it does not evaluate
        culprit = _unevaluable_expression(path)
        if culprit is None:
            raise
        raise UsageError(f"{RECIPE} {path}: {culprit} is not an expression sparseml evaluates (it takes numbers, "
                         f"variables, + - * / // % ** and abs, float, int, min, max, round)") from err
    except (TypeError, ValueError) as err:
        # sparseml rejects a setting with a ValueError, or a TypeError naming the argument or the type it must
        # be; any other TypeError is sparseml itself failing, a bug to show as one, not the user's recipe
        if isinstance(err, TypeError) and not re.search(r"argument|must be", str(err)):
            raise
        raise UsageError(f"{RECIPE} {path}: invalid modifier settings ({err})") from err
    if not manager.modifiers:
        raise UsageError(f"{RECIPE} {path}: holds no modifiers")
    check_epoch_range(manager, path, variables)
    manager = _scheme_quantization_as_classic(manager, path)
    modifiers = list(_modifiers(manager))
    if any(isinstance(m, StructuredPruningModifier) for m in modifiers) and any(map(is_quantization, modifiers)):
        raise UsageError(f"{RECIPE} {path}: !StructuredPruningModifier and !QuantizationModifier in one recipe: "
                         f"quantize the compacted model in a second run (recipes/qat1epoch.yaml)")
    for modifier in _modifiers(manager):
        if is_layer_pruning(modifier) and modifier.end_epoch != -1:
            raise UsageError(f"{RECIPE} {path}: !LayerPruningModifier with end_epoch {modifier.end_epoch:g} would put "
                             f"the layers back; only end_epoch -1 (removed for good) is supported")
    return manager


class _AnyVariable(dict):
    """Every name is a variable worth 1: to try an expression's form without its values."""

    def __contains__(self, name):
        return True

    def __getitem__(self, name):
        return 1.0


def _unevaluable_expression(path: str) -> str | None:
    """'name: eval(expression)' for the first of the recipe's eval(...) values that sparseml's restricted
    evaluator cannot take (a function call it does not know, `or`, an attribute), or None."""

    with open(path) as handle:
        for line in handle:
            match = re.match(r"\s*-?\s*([\w.]+)\s*:\s*eval\((.*)\)\s*$", line.split(" #", 1)[0])
            if not match:
                continue
            try:
                restricted_eval(match.group(2), _AnyVariable())
            except (RuntimeError, AttributeError, SyntaxError):
                return f"{match.group(1)}: eval({match.group(2)})"
            except Exception:  # a value error of the sample values (1 / (x - 1)): the form itself is fine
                continue
    return None


def _scheme_quantization_as_classic(manager: ScheduledModifierManager, path: str) -> ScheduledModifierManager:
    """The manager with each scheme-based !QuantizationModifier replaced by the classic one of the same meaning
    (sparsebert/scheme_quantization.py): the scheme-based one fails on torch 2."""
    from sparsebert.scheme_quantization import classic_equivalent

    if not any(is_scheme_based_quantization(m) for m in _modifiers(manager)):
        return manager

    def replaced(modifiers):
        return [classic_equivalent(m, f"{RECIPE} {path}") if is_scheme_based_quantization(m) else m for m in modifiers]

    stages = manager.modifiers
    modifiers = {name: replaced(each) for name, each in stages.items()} if isinstance(stages, dict) \
        else replaced(stages)
    logger.info(f"{path}: its scheme-based !QuantizationModifier runs as sparseml's classic one, with the same "
                f"modules, bits and symmetry (the scheme-based one fails on torch 2)")
    return ScheduledModifierManager(modifiers, metadata=manager.metadata)


def check_epoch_range(manager: ScheduledModifierManager, path: str, variables: dict | None = None):
    """An !EpochRangeModifier sets the training length; a modifier that runs past it (a pruning end moved by
    --recipe_args num_epochs, say) would stretch the run silently: refused, naming both epochs."""
    ranges = [m for m in _modifiers(manager) if is_epoch_range(m)]
    if not ranges:
        return
    end = max(m.end_epoch for m in ranges)
    for modifier in _modifiers(manager):
        last = max(getattr(modifier, "start_epoch", -1), getattr(modifier, "end_epoch", -1))
        if modifier not in ranges and last > end:
            given = f" with `recipe_args` '{json.dumps(variables)}'" if variables else ""
            raise UsageError(f"{RECIPE} {path}{given}: its !EpochRangeModifier ends at epoch {end:g}, before its "
                             f"!{type(modifier).__name__} (epoch {last:g}); make the range cover every modifier")


def check_supported_modifiers(path: str):
    """Refuse, by its tag, a modifier we do not drive, before sparseml builds it (its own checks would otherwise
    speak first, about settings of a modifier that could not run anyway)."""
    known = yaml.SafeLoader.yaml_constructors  # sparseml registers each of its modifiers as !pytorch.<Name>
    with open(path) as handle:
        for number, line in enumerate(handle, start=1):
            for name in re.findall(r"!(?:pytorch\.)?(\w+)", line.split("#", 1)[0]):
                if name not in SUPPORTED_MODIFIERS and f"!pytorch.{name}" in known:
                    raise UsageError(f"{RECIPE} {path}: !{name} (line {number}) is not supported by these scripts "
                                     f"(supported: {', '.join(SUPPORTED_MODIFIERS)})")


def _modifiers(manager):
    return list(manager.iter_modifiers())


def targeted_parameter_names(manager: ScheduledModifierManager, model, recipe_path: str = "") -> list[str]:
    """Names of the model's parameters that the recipe's modifiers act on; a pattern matching nothing is an
    error (a recipe for another architecture would otherwise train dense without a word)."""
    targeted = set()
    for modifier in _modifiers(manager):
        targeted.update(modifier_parameter_names(modifier, model, recipe_path))
    return [name for name, _ in model.named_parameters() if name in targeted]


def modifier_parameter_names(modifier, model, recipe_path: str = "") -> list[str]:
    """The parameters one modifier's `params` select (none for modifiers without them)."""
    patterns = getattr(modifier, "params", None)
    if not patterns:
        return []
    names = [name for name, _ in model.named_parameters()]
    selected = set()
    for pattern in [patterns] if isinstance(patterns, str) else patterns:
        if pattern in _PARAM_KEYWORDS:
            selected.update(n for n, p in model.named_parameters() if p.dim() >= 2 and "embeddings" not in n)
            continue
        matched = [n for n in names if any_str_or_regex_matches_param_name(n, [pattern])]
        if not matched:
            example = next((n for n in names if ".weight" in n and "encoder" in n), names[0])
            raise UsageError(f"{RECIPE} {recipe_path}: params pattern '{pattern}' of {type(modifier).__name__} "
                             f"matches no parameter of this model (its names look like {example!r})")
        selected.update(matched)
    return [n for n in names if n in selected]


def check_cyclic_learning_rates(manager: ScheduledModifierManager, steps_per_epoch: int, total_epochs: float,
                                recipe_path: str):
    """sparseml 1.8's cyclic_linear misbehaves in ways a run would only show in its log: cycles shorter than two
    optimizer steps or ending mid-step give negative learning rates, a span of whole cycles that ends before
    training does divides by zero at its end, and after its end the rate stays at the value it last set. Check the
    rate it will set at each step, now that the steps per epoch are known, and refuse what would go wrong."""
    lr_modifiers = manager.learning_rate_modifiers
    for modifier in lr_modifiers:
        if getattr(modifier, "lr_func", None) != "cyclic_linear":
            continue
        start, end, cycle = modifier.start_epoch, modifier.end_epoch, modifier.cycle_epochs
        where = (f"{RECIPE} {recipe_path}: !LearningRateFunctionModifier cyclic_linear over epochs {start:g}-{end:g} "
                 f"(cycles of {cycle:g} epochs = {cycle * steps_per_epoch:g} optimizer steps at {steps_per_epoch} "
                 f"per epoch)")
        last_step = min(math.floor(end * steps_per_epoch), math.ceil(total_epochs * steps_per_epoch) - 1)
        for step in range(math.ceil(start * steps_per_epoch), last_step + 1):
            rate = sparseml_cyclic_linear(modifier, step / steps_per_epoch, steps_per_epoch)
            if rate is None or rate < 0:
                raise UsageError(f"{where}: sparseml would set {'no' if rate is None else f'a negative ({rate:.3g})'} "
                                 f"learning rate at step {step}; use cycles of at least 2 whole optimizer steps that "
                                 f"divide the span")
        takes_over = any(m is not modifier and m.start_epoch >= end for m in lr_modifiers)
        if end < total_epochs and not takes_over:
            raise UsageError(f"{where}: it ends before training does (epoch {total_epochs:g}) and no learning-rate "
                             f"modifier follows, so sparseml would leave the rate at its last value until the end; "
                             f"end it with training or add one for the rest")


def schedule_epochs(manager: ScheduledModifierManager) -> float | None:
    """Epochs the recipe's schedule spans (its last start or end epoch), or None if it sets no length. Exact, not
    sparseml's manager.max_epochs, which rounds up to whole epochs: a 0.001-epoch one-shot recipe would train a
    whole epoch, and its pruning modifier would run again at its end_epoch."""
    epochs = [float(epoch) for modifier in manager.iter_modifiers()
              for epoch in (modifier.start_epoch, modifier.end_epoch) if epoch > -1]
    return max(epochs) if epochs and max(epochs) > 0 else None


def apply_recipe_epochs(manager: ScheduledModifierManager, training_args, recipe_path: str):
    """Let the recipe set the training length: a schedule cut short or run past would not mean what the recipe
    says. --max_steps, when given, still wins (the trainer warns that the recipe is cut short)."""
    epochs = schedule_epochs(manager)
    if epochs is None:
        return
    if training_args.max_steps > 0:
        logger.warning(f"`max_steps` {training_args.max_steps} sets the training length; the recipe "
                       f"{recipe_path} spans {epochs:g} epochs")
        return
    if epochs != training_args.num_train_epochs:
        given = getattr(training_args, "given_flags", None)  # parsed from a command line, or built in code
        if given is not None and "num_train_epochs" in given:
            logger.warning(f"Training for {epochs:g} epochs as the recipe {recipe_path} sets (its last end_epoch), "
                           f"not `num_train_epochs` {training_args.num_train_epochs:g}: the recipe wins so that "
                           f"its schedule completes as written")
        elif given is None and training_args.num_train_epochs != _default_epochs(training_args):
            logger.warning(f"Training for {epochs:g} epochs as the recipe {recipe_path} sets (its last end_epoch), "
                           f"not the num_train_epochs={training_args.num_train_epochs:g} of the TrainingArguments")
        else:
            logger.info(f"Training for {epochs:g} epochs, as the recipe {recipe_path} sets (its last end_epoch)")
        training_args.num_train_epochs = epochs


def _default_epochs(training_args) -> float:
    return next(f.default for f in dataclasses.fields(training_args) if f.name == "num_train_epochs")


def save_recipe(manager: ScheduledModifierManager, recipe_path: str | None, variables: dict, output_dir: str):
    """output_dir/recipe.yaml: the file as given, or the recipe as sparseml resolved it when variables changed it,
    it came as Markdown or it was built in code (recipe_path None; recipe.yaml must be YAML: a quantized model is
    rebuilt from it on reload)."""
    target = os.path.join(output_dir, "recipe.yaml")
    tmp = f"{target}.tmp"
    os.makedirs(output_dir, exist_ok=True)
    if recipe_path is None or variables or not recipe_path.endswith((".yaml", ".yml")):
        with open(tmp, "w") as handle:
            given = f" with recipe variables {json.dumps(variables)}" if variables else ""
            handle.write(f"# {recipe_path or 'a recipe built in code'}{given}, as resolved by sparseml\n")
            handle.write(_yaml_parameter_lists(str(manager)))
    else:
        shutil.copyfile(recipe_path, tmp)
    os.replace(tmp, target)


def _yaml_parameter_lists(resolved: str) -> str:
    """sparseml writes a modifier's params as a Python list literal, ['re:.*layer.\\d+...'], which YAML reads as
    single-quoted strings, keeping both backslashes: the pattern would then match no parameter. Rewrite each such
    list as JSON (valid YAML) so that the file reads back as the same patterns."""
    def rewrite(match):
        return f"{match.group(1)}{json.dumps(ast.literal_eval(match.group(2)))}"

    return re.sub(r"^(\s*params: )(\[.*\])$", rewrite, resolved, flags=re.MULTILINE)


def quiet_sparseml_loggers():
    """Route the modifiers' own logs to a debug-level Python logger: sparseml's default would write log
    files into a sparse_logs/ folder in the working directory."""
    return LoggerManager([PythonLogger(logger=logging.getLogger("sparseml.modifiers"))], log_python=False)
