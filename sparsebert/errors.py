"""The ways a run ends early on purpose, which the scripts turn into a one-line message and an exit status."""


class UsageError(Exception):
    """Bad input from the user: reported as one line naming the culprit, exit status 2, nothing written. The
    message names a setting by its parameter name in backquotes (`output_dir`), as a Python caller passes it; the
    command line shows the flag instead (sparsebert.cli.as_flags)."""


class CheckFailed(Exception):
    """The run did its work but a check of the result failed (an ONNX file that disagrees with PyTorch): its
    outputs stay for inspection, the exit status is 1."""


class Interrupted(Exception):
    """Training was stopped by a signal after saving a checkpoint to resume from: exit status 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


def load_or_refuse(setting: str, name: str, load, hint: str = ""):
    """Run a from_pretrained or load_dataset call; a model or dataset that cannot be found, reached or read
    becomes a one-line UsageError naming the setting (the Hub's own errors are tracebacks several screens long)."""
    try:
        return load()
    except (OSError, ValueError) as err:  # a Hub that cannot be reached raises ConnectionError, an OSError
        reason = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise UsageError(f"{setting} {name}: cannot load it ({reason}){hint}") from err
