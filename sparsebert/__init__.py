"""Recipe-driven sparsification for Hugging Face Trainer scripts (SparseML 1.8 underneath).

From your own script, four steps (see examples/token_classification.py):

    from sparsebert import SparseMLTrainer, export_onnx            # 1. imports
    trainer = SparseMLTrainer(model=model, args=training_args,      # 2. the recipe (it sets the epochs)
                              train_dataset=train, recipe="recipes/90sparsity2epoch.yaml")
    trainer.train(); trainer.save_model()                           # 3. train: pruned as it goes
    export_onnx(trainer.model, tokenizer, "out", ["logits"])        # 4. ONNX, checked against PyTorch

The rest of the package serves the scripts: recipes, distillation, layer dropping, quantization, metrics.
"""

import importlib
import sys
import warnings

# sparseml 1.8.0, the engine, is published for these alone; pyproject.toml's requires-python and the README say so
SUPPORTED_PYTHON = ((3, 10), (3, 11))


def unsupported_python(version=sys.version_info) -> "str | None":
    """The one-line refusal for a Python sparseml 1.8.0 does not install on, or None."""
    if tuple(version[:2]) in SUPPORTED_PYTHON:
        return None
    supported = " or ".join(f"{major}.{minor}" for major, minor in SUPPORTED_PYTHON)
    return (f"error: Python {version[0]}.{version[1]} is not supported: sparseml 1.8.0, which these scripts train "
            f"with, installs on Python {supported} only (get one with `uv python install 3.11`)")


_refusal = unsupported_python()
if _refusal is not None:  # before any import that would fail on it with a traceback
    print(_refusal, file=sys.stderr)
    sys.exit(2)

# sparseml 1.8 imports pkg_resources, which warns on every run: a one-line error would become three lines
warnings.filterwarnings("ignore", message="pkg_resources is deprecated", category=UserWarning)

_PUBLIC = {"SparseMLTrainer": "sparsebert.trainer", "export_onnx": "sparsebert.onnx_export",
           "load_recipe": "sparsebert.recipe", "sparsity_report": "sparsebert.sparsity",
           "UsageError": "sparsebert.errors"}
__all__ = list(_PUBLIC)


def __getattr__(name):
    """The public names load their modules (torch, sparseml) on first use, not on any `import sparsebert.x`."""
    if name not in _PUBLIC:
        raise AttributeError(f"module 'sparsebert' has no attribute {name!r}")
    return getattr(importlib.import_module(_PUBLIC[name]), name)
