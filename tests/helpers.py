"""Helpers shared by the tests."""

import os


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
