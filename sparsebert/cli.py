"""What every script shares at the command line: the argument dataclasses, parsing (flags or one .json
file), logging set-up, the up-front checks on flags and paths, and the one-line error on bad input."""

import functools
import json
import logging
import os
import re
import sys
import tempfile
import traceback
from dataclasses import dataclass, field

import datasets
import torch
import transformers
from transformers import HfArgumentParser, TrainingArguments

from sparsebert.errors import CheckFailed, Interrupted, UsageError

logger = logging.getLogger("sparsebert")


TRACEBACK_VARIABLE = "SPARSEBERT_TRACEBACK"


def run_cli(main):
    """Call main(); a UsageError becomes a one-line message on stderr and exit status 2, a CheckFailed exit 1.
    With --log_level debug (or SPARSEBERT_TRACEBACK=1) the traceback comes first, with the error that caused it."""
    try:
        return main()
    except (UsageError, CheckFailed) as err:
        if wants_traceback(sys.argv[1:]):
            traceback.print_exception(err, file=sys.stderr)
        print(f"error: {as_flags(str(err))}", file=sys.stderr)
        sys.exit(2 if isinstance(err, UsageError) else 1)
    except Interrupted as stop:  # the checkpoint is saved and the way to resume logged
        sys.exit(128 + stop.signum)


def as_flags(text: str) -> str:
    """A library message as the command line shows it: a setting it names as `like_this` (the argument
    dataclasses' field, as a Python caller passes it) becomes the flag --like_this."""
    return re.sub(r"`([a-z][a-z0-9_]*)`", r"--\1", text)


class FlagNames(logging.Filter):
    """Our own log lines name settings as flags on the command line (see as_flags)."""

    def filter(self, record):
        if record.name.startswith("sparsebert"):
            record.msg, record.args = as_flags(record.getMessage()), ()
        return True


def wants_traceback(argv) -> bool:
    if os.environ.get(TRACEBACK_VARIABLE, "") not in ("", "0"):
        return True
    for position, flag in enumerate(argv):
        if flag == "--log_level=debug" or (flag == "--log_level" and argv[position + 1:position + 2] == ["debug"]):
            return True
    return False


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
            raise UsageError(f"--recipe_args is not valid JSON ({err.msg}): {self.recipe_args}") from err
        if not isinstance(variables, dict):
            raise UsageError(f"--recipe_args must be a JSON object of variable names to values: {self.recipe_args}")
        return variables


@dataclass
class SparseTrainingArguments(TrainingArguments):
    """TrainingArguments with two rules for training on several processes. Sharded training is refused: FSDP
    and DeepSpeed ZeRO split each weight across processes, while sparseml's modifiers hold references to the
    whole parameters, so masks would be lost (sparseml issue #1807). And on CPU, torchrun processes are made one
    data-parallel run (use_cpu, gloo): by default each trained alone, its own copy of the model."""

    def __post_init__(self):
        for flag in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
            if getattr(self, flag) < 1:
                raise UsageError(f"--{flag} {getattr(self, flag)}: must be at least 1")
        for flag, value in (("--fsdp", self.fsdp), ("--deepspeed", self.deepspeed)):
            if value:
                raise UsageError(f"{flag} is not supported: sharded training splits each weight across processes and "
                                 f"sparseml's masks would be lost (sparseml #1807); use data parallel training "
                                 f"(torchrun, without {flag}), which keeps a whole model on each process")
        distributed = int(os.environ.get("WORLD_SIZE", "1")) > 1
        if distributed and not torch.cuda.is_available():
            # accelerate only makes CPU processes one DDP run when told they are on the CPU; otherwise each
            # trains its own copy on its shard of the data, and evaluation gathers nothing from the others
            self.use_cpu = True
            self.ddp_backend = self.ddp_backend or "gloo"
        super().__post_init__()


LOGS_PER_RUN = 50  # unless --logging_steps is given: the loss and the schedule show in a run of any length


def parse_args(dataclass_types, argv=None):
    """Parse flags into the dataclasses (TrainingArguments last); a single .json argument is a file of them.
    The TrainingArguments remember which flags the user gave (given_flags), so that a default is never reported
    as the user's choice, and get this project's run defaults where the user set nothing."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = HfArgumentParser(dataclass_types)
    if len(argv) == 1 and argv[0].endswith(".json"):
        if not os.path.isfile(argv[0]):
            raise UsageError(f"argument file {argv[0]}: no such file")
        try:
            parsed = parser.parse_json_file(json_file=os.path.abspath(argv[0]))
            with open(argv[0]) as handle:
                given = set(json.load(handle))
        except json.JSONDecodeError as err:
            raise UsageError(f"argument file {argv[0]}: not valid JSON ({err})") from err
        except ValueError as err:
            raise UsageError(f"argument file {argv[0]}: {err}") from err
    else:
        try:
            parsed = parser.parse_args_into_dataclasses(args=argv)
        except ValueError as err:  # flags no dataclass knows: HfArgumentParser raises rather than exits
            raise UsageError(str(err).replace("Some specified arguments are not used by the HfArgumentParser",
                                              "unknown argument(s)")) from err
        given = {arg[2:].split("=", 1)[0].replace("-", "_") for arg in argv if arg.startswith("--")}
    export_path = next((args.onnx_export_path for args in parsed if getattr(args, "onnx_export_path", None)), None)
    for args in parsed:
        if isinstance(args, TrainingArguments):
            args.given_flags = frozenset(given)
            if "output_dir" not in given:  # the Trainer would fall back to ./trainer_output
                if export_path is None:
                    raise UsageError("--output_dir is required: the folder for the model, its metrics and its "
                                     "ONNX file")
                args.output_dir = export_path  # the seed's export command names only --onnx_export_path
            if "logging_steps" not in given:
                args.logging_steps = 1 / LOGS_PER_RUN  # the Trainer reads a fraction as a share of the run's steps
    return parsed


def setup_logging(training_args: TrainingArguments):
    """Our progress at INFO on the main process; the libraries at their usual WARNING unless --log_level says."""
    handler = logging.StreamHandler(sys.stdout)
    handler.addFilter(FlagNames())
    logging.basicConfig(format="%(asctime)s - %(levelname)s - %(name)s - %(message)s", datefmt="%m/%d/%Y %H:%M:%S",
                        handlers=[handler])
    library_level = training_args.get_process_log_level()
    explicit = training_args.log_level != "passive"
    own_level = library_level if explicit else (logging.INFO if training_args.should_log else logging.WARNING)
    for name in ("sparsebert", "__main__", "run_qa", "run_glue", "run_distill_qa", "utils_qa", "trainer_qa"):
        logging.getLogger(name).setLevel(own_level)
    datasets.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.set_verbosity(library_level)
    transformers.utils.logging.enable_default_handler()
    transformers.utils.logging.enable_explicit_format()


def check_output_dir(training_args: TrainingArguments, sparse_args: SparsificationArguments):
    """Refuse, before anything is written, an output that would clobber earlier work or cannot be written."""
    output_dir = training_args.output_dir
    resuming = training_args.resume_from_checkpoint is not None
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise UsageError(f"--output_dir {output_dir} is an existing file, not a folder")
    if (training_args.do_train and not resuming and not sparse_args.overwrite_output_dir
            and os.path.isdir(output_dir) and os.listdir(output_dir)):
        raise UsageError(f"--output_dir {output_dir} already exists and is not empty: use --overwrite_output_dir "
                         f"to replace it, or --resume_from_checkpoint to continue it")
    _check_writable(output_dir, "--output_dir")
    if sparse_args.do_onnx_export:
        export_dir = sparse_args.onnx_export_path or output_dir
        if os.path.isfile(export_dir):
            raise UsageError(f"--onnx_export_path {export_dir} is an existing file: it names the folder for model.onnx")
        _check_writable(export_dir, "--onnx_export_path")


def _check_writable(path: str, flag: str):
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing) or not os.access(existing, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: cannot write there ({existing} is not a writable folder)")
    if existing != os.path.abspath(path):
        # the permission bits say yes to root where the kernel says no (/proc, a read-only mount): try a folder of
        # this process's own there (several processes of one run check at once), and leave nothing behind
        try:
            os.rmdir(tempfile.mkdtemp(prefix=".sparsebert-check-", dir=existing))
        except OSError as err:
            raise UsageError(f"{flag} {path}: cannot create it ({err.strerror})") from err
