"""Shared logic of the scripts: recipes, the SparseML Trainer, distillation, layer dropping, export, metrics."""

import warnings

# sparseml 1.8 imports pkg_resources, which warns on every run: a one-line error would become three lines
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)
