"""The settings of a run (the scripts' flags, a Python caller's arguments) and the checks on them that need no
model or data: a bad value or an output folder that would clobber earlier work is refused before anything loads."""

import functools
import json
import os
import tempfile
from dataclasses import dataclass, field

import torch
from transformers import TrainingArguments

from sparsebert.errors import UsageError


@dataclass
class ModelArguments:
    model_name_or_path: str = field(
        default=None, metadata={"help": "Model to fine-tune: a Hub name or a local folder (save_pretrained output)."}
    )
    student_model_name_or_path: str | None = field(
        default=None, metadata={"help": "The model to train when distilling: the same as --model_name_or_path."}
    )
    config_name: str | None = field(default=None, metadata={"help": "Config name or path if not the model's."})
    tokenizer_name: str | None = field(default=None, metadata={"help": "Tokenizer name or path if not the model's."})
    cache_dir: str | None = field(default=None, metadata={"help": "Where Hub downloads (models, data) are cached."})
    teacher_model_name_or_path: str | None = field(
        default=None,
        metadata={"help": "A model already trained for the task to distill from; absent or 'disable' means none."},
    )
    distill_teacher: str | None = field(
        default=None, metadata={"help": "The same as --teacher_model_name_or_path (the name sparseml's trainer used)."}
    )
    temperature: float = field(default=2.0, metadata={"help": "Softmax temperature of the distillation KL."})
    distill_hardness: float = field(
        default=1.0, metadata={"help": "Share of the loss from the teacher: 1.0 all distillation, 0.0 none."}
    )
    layers_to_keep: int | None = field(
        default=None, metadata={"help": "Keep this many of the model's encoder layers before training."}
    )
    layer_selection: str = field(
        default="seed",
        metadata={"help": "Which layers --layers_to_keep keeps: 'seed' (the seed's choice for 12 layers, else "
                          "evenly spaced), 'evenly_spaced' (first and last always kept) or 'first'."},
    )

    @property
    def teacher(self) -> str | None:
        name = self.teacher_model_name_or_path or self.distill_teacher
        return None if name in (None, "", "disable") else name


@dataclass
class SparsificationArguments:
    nm_prune_config: str | None = field(
        default=None, metadata={"help": "SparseML recipe (YAML, or Markdown with YAML front matter) that drives "
                                        "pruning, the training length and whatever else its modifiers set."}
    )
    recipe: str | None = field(default=None, metadata={"help": "The same as --nm_prune_config."})
    recipe_args: str | None = field(
        default=None, metadata={"help": 'JSON overrides of the recipe\'s variables, e.g. \'{"num_epochs": 3}\'.'}
    )
    quantize_attention: bool = field(
        default=True, metadata={"help": "With a recipe's QuantizationModifier, quantize attention's two matmuls too, "
                                        "not only the Linear layers (--no_quantize_attention: Linear only)."}
    )
    do_onnx_export: bool = field(default=False, metadata={"help": "Export the model to ONNX and verify it."})
    onnx_export_path: str | None = field(
        default=None, metadata={"help": "Folder for model.onnx (default: --output_dir)."}
    )
    overwrite_output_dir: bool = field(
        default=False, metadata={"help": "Train into an existing non-empty --output_dir, replacing its contents."}
    )

    @functools.cached_property
    def recipe_variables(self) -> dict:
        if not self.recipe_args:
            return {}
        try:
            variables = json.loads(self.recipe_args)
        except json.JSONDecodeError as err:
            raise UsageError(f"`recipe_args` is not valid JSON ({err.msg}): {self.recipe_args}") from err
        if not isinstance(variables, dict):
            raise UsageError(f"`recipe_args` must be a JSON object of variable names to values: {self.recipe_args}")
        return variables


@dataclass
class SparseTrainingArguments(TrainingArguments):
    """TrainingArguments with two rules for training on several processes. Sharded training is refused: FSDP
    and DeepSpeed ZeRO split each weight across processes, while sparseml's modifiers hold references to the
    whole parameters, so masks would be lost (sparseml issue #1807). And on CPU, torchrun processes are made one
    data-parallel run (use_cpu, gloo): by default each trained alone, its own copy of the model."""

    def __post_init__(self):
        for setting in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, setting) < 1:
                raise UsageError(f"`{setting}` {getattr(self, setting)}: must be at least 1")
        for setting, value in (("`fsdp`", self.fsdp), ("`deepspeed`", self.deepspeed)):
            if value:
                raise UsageError(f"{setting} is not supported: sharded training splits each weight across processes "
                                 f"and sparseml's masks would be lost (sparseml #1807); use data parallel training "
                                 f"(torchrun, without {setting}), which keeps a whole model on each process")
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed and not torch.cuda.is_available():
            # accelerate only makes CPU processes one DDP run when told they are on the CPU; otherwise each
            # trains its own copy on its shard of the data, and evaluation gathers nothing from the others
            self.use_cpu = True
            self.ddp_backend = self.ddp_backend or "gloo"
        super().__post_init__()


def check_output_dir(training_args: TrainingArguments, sparse_args: SparsificationArguments):
    """Refuse, before anything is written, an output that would clobber earlier work or cannot be written."""
    output_dir = training_args.output_dir
    resuming = training_args.resume_from_checkpoint is not None
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"`output_dir` {output_dir} is an existing file, not a folder")
    if (training_args.do_train and not resuming and not sparse_args.overwrite_output_dir
            and os.path.isdir(output_dir) and os.listdir(output_dir)):
        raise UsageError(f"`output_dir` {output_dir} already exists and is not empty: use `overwrite_output_dir` "
                         f"to replace it, or `resume_from_checkpoint` to continue it")
    _check_writable(output_dir, "`output_dir`")
    if sparse_args.do_onnx_export:
        export_dir = sparse_args.onnx_export_path or output_dir
        if os.path.isfile(export_dir):
            raise UsageError(f"`onnx_export_path` {export_dir} is an existing file: it names the folder for model.onnx")
        _check_writable(export_dir, "`onnx_export_path`")


def _check_writable(path: str, setting: str):
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{setting} {path}: cannot write there ({existing} is not a writable folder)")
    if existing != os.path.abspath(path):
        # the permission bits say yes to root where the kernel says no (/proc, a read-only mount): try a folder of
        # this process's own there (several processes of one run check at once), and leave nothing behind
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".sparsebert-check-", dir=existing))
        except OSError as err:
            raise UsageError(f"{setting} {path}: cannot create it ({err.strerror})") from err
