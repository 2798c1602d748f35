#!/usr/bin/env python
"""Distill a SQuAD model from a teacher while pruning it and, optionally, dropping layers.

The same pipeline as run_qa.py (every flag works here), for the seed's distillation commands:

    python run_distill_qa.py --teacher_model_name_or_path TRAINED_QA_MODEL \
        --student_model_name_or_path bert-base-uncased --distill_hardness 1.0 --temperature 2.0 \
        --layers_to_keep 6 --nm_prune_config recipes/80sparselong.yaml ...

loss = (1 - hardness) * the student's own QA loss + hardness * T^2 * (KL_start + KL_end) / 2
"""

from run_qa import ARGUMENT_CLASSES, main  # noqa: F401  (the same flags as run_qa.py)
from sparsebert.cli import run_cli

if __name__ == "__main__":
    run_cli(main)
