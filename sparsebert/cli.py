"""What every script shares at the command line: parsing flags (or one .json file) into the argument dataclasses
(sparsebert.arguments), logging set-up, and the one-line error on bad input, which names settings as flags."""

import json
import logging
import os
import re
import sys
import traceback

import datasets
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
