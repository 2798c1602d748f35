"""Helpers shared by the tests."""

import contextlib
import os
import re

import torch
from datasets import Dataset
from transformers import TrainerCallback


def qa_args(model_dir, squad_files, output_dir, *extra):
    """run_qa.py flags for a few-second run on the tiny model and data."""
    return ["--model_name_or_path", model_dir, "--train_file", squad_files["train"],
            "--validation_file", squad_files["dev"], "--output_dir", str(output_dir),
            "--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16",
            "--per_device_train_batch_size", "8", "--per_device_eval_batch_size", "8",
            "--learning_rate", "5e-4", "--seed", "7", "--report_to", "none", "--disable_tqdm", "true",
            "--save_strategy", "no", "--use_cpu", "true", *extra]


def listing(path):
    """Every file below path with its size and modification time, to prove nothing changed."""
    if not os.path.exists(path):
        return None
    return sorted((os.path.relpath(os.path.join(root, f), path), os.path.getsize(os.path.join(root, f)),
                   os.path.getmtime(os.path.join(root, f)))
                  for root, _, files in os.walk(path) for f in files)


def random_qa_dataset(rows=48, seq_len=16, seed=0):
    generator = torch.Generator().manual_seed(seed)
    ids = torch.randint(5, 90, (rows, seq_len), generator=generator)
    starts = torch.randint(1, seq_len // 2, (rows,), generator=generator)
    return Dataset.from_dict({"input_ids": ids.tolist(), "attention_mask": torch.ones_like(ids).tolist(),
                              "start_positions": starts.tolist(), "end_positions": (starts + 2).tolist()})


class SparsityRecorder(TrainerCallback):
    def __init__(self, model, names):
        self.model, self.names, self.history = model, names, []

    def on_step_end(self, args, state, control, **kwargs):
        params = dict(self.model.named_parameters())
        self.history.append({n: float((params[n] == 0).float().mean()) for n in self.names})


@contextlib.contextmanager
def refused_on_the_command_line(pattern):
    """Expect a UsageError whose message, as the command line shows it (settings as --flags), matches pattern."""
    import pytest

    from sparsebert.cli import as_flags
    from sparsebert.errors import UsageError

    with pytest.raises(UsageError) as caught:
        yield caught
    shown = as_flags(str(caught.value))
    assert re.search(pattern, shown), f"{pattern!r} not in {shown!r}"
