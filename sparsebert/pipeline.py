"""The steps every script runs in the same way: recipe and model set-up before training, then train, save,
report sparsity, and export. (sparseml is imported where a recipe is first needed, so that --help and the
refusals of bad flags answer without loading it.)"""

import logging
import os
import re
import signal

from transformers import AutoConfig, AutoTokenizer

from sparsebert.arguments import check_output_dir
from sparsebert.errors import CheckFailed, Interrupted, UsageError, load_or_refuse
from sparsebert.jsonfile import write_json
from sparsebert.distillation import check_distillation_args, check_same_vocabulary
from sparsebert.families import check_supported
from sparsebert.onnx_export import export_onnx
from sparsebert.sparsity import format_sparsity_table, sparsity_report

logger = logging.getLogger(__name__)


def resolve_run_args(model_args, sparse_args, training_args):
    """Check the flags that need no model or data (first, so bad input costs nothing) and resolve what they leave
    implicit, in place: aliases merged into their main setting, --resume_from_checkpoint last into its folder."""
    student = model_args.student_model_name_or_path
    if student and model_args.model_name_or_path and student != model_args.model_name_or_path:
        raise UsageError(f"`student_model_name_or_path` {student} and `model_name_or_path` "
                         f"{model_args.model_name_or_path} name different models: give one")
    model_args.model_name_or_path = model_args.model_name_or_path or student
    if not model_args.model_name_or_path:
        raise UsageError("`model_name_or_path` (or `student_model_name_or_path`) is required")
    _merge_alias(model_args, "teacher_model_name_or_path", "distill_teacher")
    _merge_alias(sparse_args, "nm_prune_config", "recipe")
    if sparse_args.recipe_args and not sparse_args.nm_prune_config:
        raise UsageError("`recipe_args` needs `nm_prune_config`: there is no recipe to apply them to")
    if not (training_args.do_train or training_args.do_eval or training_args.do_predict or sparse_args.do_onnx_export):
        raise UsageError("nothing to do: pass `do_train`, `do_eval`, `do_predict` and/or `do_onnx_export`")
    check_distillation_args(model_args)
    check_local_paths(model_args)
    resume = training_args.resume_from_checkpoint
    if resume in ("True", "true", "last"):  # the HF way: the newest checkpoint-N in output_dir
        last = last_complete_checkpoint(training_args.output_dir)
        if last is None:
            raise UsageError(f"`resume_from_checkpoint` {resume}: no complete checkpoint-N folder in "
                             f"{training_args.output_dir}")
        training_args.resume_from_checkpoint = last
        logger.info(f"`resume_from_checkpoint` {resume}: resuming from {last}")
    elif resume is not None and not os.path.isfile(os.path.join(resume, "trainer_state.json")):
        raise UsageError(f"`resume_from_checkpoint` {resume}: not a complete checkpoint folder "
                         f"(no trainer_state.json)")
    check_output_dir(training_args, sparse_args)


def _merge_alias(args, name: str, alias: str):
    """Two flags for one thing: take whichever was given, refuse two different values."""
    value, alias_value = getattr(args, name), getattr(args, alias)
    if value and alias_value and value != alias_value:
        raise UsageError(f"`{name}` {value} and `{alias}` {alias_value} name different things: give one")
    setattr(args, name, value or alias_value)
    setattr(args, alias, value or alias_value)


def last_complete_checkpoint(output_dir: str) -> str | None:
    """The newest checkpoint-N holding trainer_state.json, which the Trainer writes last: a checkpoint cut off
    while being written (a crash, a kill) is skipped."""
    if not os.path.isdir(output_dir):
        return None
    numbered = [(int(m.group(1)), name) for name in os.listdir(output_dir)
                if (m := re.fullmatch(r"checkpoint-(\d+)", name))]
    for _, name in sorted(numbered, reverse=True):
        path = os.path.join(output_dir, name)
        if os.path.isfile(os.path.join(path, "trainer_state.json")):
            return path
        logger.warning(f"Skipping {path}: incomplete (no trainer_state.json)")
    return None


def load_training_recipe(sparse_args, training_args, model_args, output_names, regression=False):
    """The recipe's manager when training with one (its length applied to training_args), else None. What its
    modifiers need from this run is checked here, before any model or data is loaded."""
    if not (training_args.do_train and sparse_args.nm_prune_config):
        return None
    from sparsebert.recipe import load_recipe
    from sparsebert.seams import is_layer_pruning

    path = sparse_args.nm_prune_config
    manager = load_recipe(path, sparse_args.recipe_variables)
    for modifier in manager.distillation_modifiers:
        if model_args.teacher is None:
            raise UsageError(f"`nm_prune_config` {path}: its !DistillationModifier needs a teacher: pass "
                             f"`teacher_model_name_or_path` (or `distill_teacher`) with a model fine-tuned for the "
                             f"task")
        if regression:
            raise UsageError(f"`nm_prune_config` {path}: !DistillationModifier matches class distributions, and a "
                             f"regression head has none; drop it and use `teacher_model_name_or_path` alone (MSE)")
        missing = [key for key in modifier.distill_output_keys or () if key not in output_names]
        if missing:
            raise UsageError(f"`nm_prune_config` {path}: !DistillationModifier distill_output_keys {missing} are not "
                             f"outputs of this model (it has {', '.join(output_names)})")
    layer_pruning = any(is_layer_pruning(m) for m in manager.iter_modifiers())
    if layer_pruning and model_args.layers_to_keep is not None:
        raise UsageError(f"`layers_to_keep` and the !LayerPruningModifier of {path} both drop layers: use one")
    return manager


def check_local_paths(model_args):
    """A model name that can only be a local path (it starts with / . or ~, has more than one /, or its first
    part is a folder here) and does not exist is refused at once, instead of being tried on the Hub."""
    for setting in ("model_name_or_path", "teacher_model_name_or_path", "config_name", "tokenizer_name"):
        name = getattr(model_args, setting)
        if not name or name == "disable" or os.path.exists(name):
            continue
        first = name.split("/", 1)[0]
        if name.startswith(("/", ".", "~")) or name.count("/") > 1 or ("/" in name and os.path.isdir(first)):
            raise UsageError(f"`{setting}` {name}: no such folder")


def sparsification_kwargs(manager, sparse_args, model_args, teacher) -> dict:
    """What every script hands SparseMLTrainer from its flags: the recipe already loaded, when training with one."""
    return {"recipe": manager, "recipe_path": sparse_args.nm_prune_config, "recipe_args": sparse_args.recipe_variables,
            "teacher": teacher,
            "distill_hardness": model_args.distill_hardness, "temperature": model_args.temperature,
            "quantize_attention": sparse_args.quantize_attention}


def load_tokenizer_and_config(model_args, **config_kwargs):
    config_name = model_args.config_name or model_args.model_name_or_path
    tokenizer_name = model_args.tokenizer_name or model_args.model_name_or_path
    config = load_or_refuse(
        "`config_name`" if model_args.config_name else "`model_name_or_path`", config_name,
        lambda: AutoConfig.from_pretrained(config_name, cache_dir=model_args.cache_dir, **config_kwargs))
    tokenizer = load_or_refuse(
        "`tokenizer_name`" if model_args.tokenizer_name else "`model_name_or_path`", tokenizer_name,
        lambda: AutoTokenizer.from_pretrained(tokenizer_name, cache_dir=model_args.cache_dir))
    check_supported(config, "`config_name`" if model_args.config_name else "`model_name_or_path`", config_name)
    if not tokenizer.is_fast:
        raise UsageError(f"`model_name_or_path` {model_args.model_name_or_path}: needs a fast tokenizer "
                         f"(tokenizer.json), which the data preparation relies on for offsets")
    vocab_size = getattr(config, "vocab_size", None)
    if vocab_size is not None and len(tokenizer) > vocab_size:  # ids past the embedding: an IndexError mid-run
        setting = "`tokenizer_name`" if model_args.tokenizer_name else "`model_name_or_path`"
        raise UsageError(f"{setting} {tokenizer_name}: its tokenizer has {len(tokenizer):,} tokens, more than the "
                         f"{vocab_size:,} of the model's embedding (vocab_size): they do not belong together")
    return tokenizer, config


def load_teacher(model_args, auto_model_class, student_tokenizer, manager=None, **config_kwargs):
    """The frozen teacher model, or None; refuses a teacher whose vocabulary differs from the student's.
    With a recipe that has a DistillationModifier, the recipe's settings distill from it (never ours as well)."""
    name = model_args.teacher
    if name is None:
        return None
    setting = "`teacher_model_name_or_path`"
    teacher_tokenizer = load_or_refuse(setting, name,
                                       lambda: AutoTokenizer.from_pretrained(name, cache_dir=model_args.cache_dir))
    check_same_vocabulary(student_tokenizer, teacher_tokenizer, name)
    teacher, loading = load_or_refuse(setting, name, lambda: auto_model_class.from_pretrained(
        name, cache_dir=model_args.cache_dir, output_loading_info=True, **config_kwargs))
    missing = sorted(key for key in loading["missing_keys"] if not key.endswith("position_ids"))
    if missing:  # initialised at random: the student would learn from noise
        raise UsageError(f"{setting} {name}: its checkpoint lacks {', '.join(missing[:4])}"
                         f"{' ...' if len(missing) > 4 else ''} (a base model, not one fine-tuned for this task?); "
                         f"a teacher must be a model already trained for the task")
    recipe_distillers = manager.distillation_modifiers if manager is not None else []
    if recipe_distillers:
        settings = ", ".join(f"hardness {m.hardness:g}, temperature {m.temperature:g}" for m in recipe_distillers)
        logger.info(f"Distilling from teacher {name} as the recipe's !DistillationModifier says ({settings}); "
                    f"`distill_hardness` and `temperature` apply only to recipes without one")
    else:
        logger.info(f"Distilling from teacher {name} (hardness {model_args.distill_hardness}, "
                    f"temperature {model_args.temperature})")
    return teacher


def load_model(model_args, auto_model_class, config):
    """The model to train or evaluate: from_pretrained, or for a folder saved after quantization-aware training,
    its quantized structure (from the recipe.yaml beside it) before its weights."""
    from sparsebert.quantization import load_quantized_model, saved_quantization_recipe
    from sparsebert.structure import is_compacted, load_compacted

    path = model_args.model_name_or_path
    manager = saved_quantization_recipe(path) if os.path.isdir(path) else None
    if manager is not None:
        return load_quantized_model(auto_model_class, path, config, manager)
    if is_compacted(config):  # structurally pruned: widths per layer that plain from_pretrained cannot build
        return load_or_refuse("`model_name_or_path`", path, lambda: load_compacted(auto_model_class, path, config))
    return load_or_refuse("`model_name_or_path`", path, lambda: auto_model_class.from_pretrained(
        path, config=config, cache_dir=model_args.cache_dir))


def check_max_seq_length(max_seq_length: int, config, setting: str = "`max_seq_length`"):
    limit = getattr(config, "max_position_embeddings", None)
    if limit is not None and max_seq_length > limit:
        raise UsageError(f"{setting} {max_seq_length} is more than the model's {limit} position embeddings")


def train_and_save(trainer, training_args, num_train_examples: int):
    """Train (resuming when asked), then save the model the HF way (the trainer writes its recipe beside it) with
    its sparsity report."""
    result = trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    if trainer.graceful_stop.signal is not None:
        name = signal.Signals(trainer.graceful_stop.signal).name
        logger.warning(f"Stopped by {name} at step {trainer.state.global_step}; continue with "
                       f"`resume_from_checkpoint` last `output_dir` {training_args.output_dir}")
        raise Interrupted(trainer.graceful_stop.signal)
    save_model_atomically(trainer, training_args.output_dir)
    metrics = dict(result.metrics, train_samples=num_train_examples)
    total = trainer.training_clock.seconds()
    if total is not None:  # every attempt of a resumed run, where its checkpoints kept their time
        metrics["train_runtime_all_attempts"] = round(total, 1)
    trainer.log_metrics("train", metrics)
    trainer.save_metrics("train", metrics)
    trainer.save_state()
    report = sparsity_report(trainer.model, trainer.targeted_names)
    if trainer.is_world_process_zero():
        write_json(os.path.join(training_args.output_dir, "sparsity_report.json"), report)
        logger.info("Sparsity after training:\n" + format_sparsity_table(report))
    return report


def save_model_atomically(trainer, output_dir: str):
    """save_pretrained into a scratch folder, then rename each file into place: a crash never leaves a
    half-written model.safetensors where a finished one is expected."""
    scratch = os.path.join(output_dir, ".saving")
    trainer.save_model(scratch)  # model + tokenizer, safetensors
    if trainer.is_world_process_zero():
        for name in os.listdir(scratch):
            os.replace(os.path.join(scratch, name), os.path.join(output_dir, name))
        os.rmdir(scratch)


def export_and_verify(trainer, tokenizer, sparse_args, training_args, output_names, verify_batch=None) -> dict | None:
    """ONNX export from rank 0 only; returns the parity report."""
    if not trainer.is_world_process_zero():
        return None
    export_dir = sparse_args.onnx_export_path or training_args.output_dir
    return export_onnx(trainer.model, tokenizer, export_dir, output_names, verify_batch=verify_batch)


def log_summary(training_args, metrics: dict | None, report: dict | None, onnx_report: dict | None):
    """The run's results in a few lines, after the libraries' own output; then a failed ONNX check fails the run."""
    lines = [f"output_dir: {training_args.output_dir}"]
    if metrics:
        shown = {k: v for k, v in metrics.items() if isinstance(v, float) and not k.endswith(
            ("runtime", "per_second", "epoch"))}
        lines.append("metrics: " + ", ".join(f"{k} {v:.2f}" for k, v in shown.items()))
    if report:
        pruned = (f"pruned weights {100 * report['targeted_sparsity']:.1f}% sparse, "
                  if report["targeted_parameters"] else "")
        lines.append(f"sparsity: {pruned}whole model {100 * report['model_sparsity']:.1f}% zeros "
                     f"of {report['model_parameters']:,} parameters")
    if onnx_report:
        lines.append(f"onnx: {onnx_report['onnx_path']} ({onnx_report['precision']}, max abs diff vs PyTorch "
                     f"{onnx_report['max_abs_diff']:.1e}, {'ok' if onnx_report['parity_ok'] else 'FAILS its check'})")
    logger.info("Summary\n  " + "\n  ".join(lines))
    if onnx_report and not onnx_report["parity_ok"]:
        raise CheckFailed(f"{onnx_report['onnx_path']} disagrees with the PyTorch model ({onnx_report['rule']}: "
                          f"max abs diff {onnx_report['max_abs_diff']:.2e}, same prediction "
                          f"{onnx_report['prediction_agreement']:.0%}); see onnx_parity.json beside it")
