"""The Trainer every script uses: the optimizer wrapped by SparseML's ScheduledOptimizer so the recipe
prunes as training goes, optional teacher distillation, and the sparsity logged with the loss."""

import json
import logging
import os
import signal

import torch
from sparseml.pytorch.optim import ScheduledModifierManager, ScheduledOptimizer
from sparseml.pytorch.utils import LoggerManager, PythonLogger
from transformers import Trainer, TrainerCallback

from sparsebert.cli import UsageError, write_json
from sparsebert.distillation import combine_losses, distillation_loss, freeze_teacher
from sparsebert.recipe import schedule_epochs
from sparsebert.sparsity import zero_fraction

logger = logging.getLogger(__name__)


class SparseMLTrainer(Trainer):
    """A Trainer driven by a SparseML recipe.

    recipe: the ScheduledModifierManager, or None to train dense.
    targeted_names: parameters the recipe prunes (their sparsity is logged).
    teacher: a frozen model to distill from; logit_keys name its outputs to match (("logits",) or
    ("start_logits", "end_logits")); regression uses MSE instead of KL.
    """

    # compute_loss returns per-batch means: the Trainer divides them for gradient accumulation
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, *, recipe: ScheduledModifierManager | None = None,
                 recipe_path: str = "", targeted_names=(), teacher=None, logit_keys=("logits",), temperature=2.0,
                 hardness=1.0, regression=False, **kwargs):
        # the Trainer creates output_dir right away; remember whether it was there before
        self._made_output_dir = args is None or not os.path.exists(args.output_dir)
        super().__init__(model=model, args=args, **kwargs)
        self.recipe = recipe
        self.recipe_path = recipe_path
        self.targeted_names = list(targeted_names)
        self.steps_per_epoch = None
        self.teacher = freeze_teacher(teacher, self.args.device) if teacher is not None else None
        self.logit_keys = tuple(logit_keys)
        self.temperature = temperature
        self.hardness = hardness
        self.regression = regression
        self._loss_parts = {"student_loss": 0.0, "distill_loss": 0.0, "batches": 0}
        self.graceful_stop = GracefulStop()
        self.add_callback(self.graceful_stop)

    # ---- the recipe's schedule -----------------------------------------------------------------

    def set_initial_training_values(self, args, dataloader):
        """Capture the Trainer's own optimizer steps per epoch: a recipe epoch is one pass over the training
        data, whatever the batch size, gradient accumulation and number of processes."""
        values = super().set_initial_training_values(args, dataloader)
        self.steps_per_epoch = values[1]
        max_steps = values[-1]
        epochs = schedule_epochs(self.recipe) if self.recipe is not None else None
        if epochs is not None and epochs * self.steps_per_epoch > max_steps + 1e-6:
            self._remove_output_dir_if_untouched()
            raise UsageError(
                f"--nm_prune_config {self.recipe_path}: the recipe runs to epoch {epochs:g} "
                f"({round(epochs * self.steps_per_epoch)} optimizer steps at {self.steps_per_epoch} per epoch) but "
                f"training stops after {max_steps} (--max_steps): its schedule would not finish"
            )
        return values

    def _remove_output_dir_if_untouched(self):
        output_dir = self.args.output_dir
        if self._made_output_dir and os.path.isdir(output_dir) and not os.listdir(output_dir):
            os.rmdir(output_dir)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.recipe is None or isinstance(optimizer, ScheduledOptimizer):
            return optimizer
        self.optimizer = _ResumableScheduledOptimizer(
            optimizer, self.model, self.recipe, steps_per_epoch=self.steps_per_epoch,
            loggers=quiet_sparseml_loggers(),
        )
        # on resume the Trainer has already restored global_step: continue the schedule from there
        resumed_steps = self.state.global_step if self.state is not None else 0
        if resumed_steps:
            wrapper = self.optimizer._wrapper
            wrapper._wrapped_steps = resumed_steps
            wrapper._wrapped_epoch = resumed_steps / self.steps_per_epoch
            logger.info(f"Recipe schedule resumed at step {resumed_steps} (epoch {wrapper._wrapped_epoch:.3f})")
        return self.optimizer

    def finalize_recipe(self):
        """Detach the recipe's hooks from the model; the pruned zeros stay in the weights."""
        if self.recipe is not None:
            self.recipe.finalize(self.model)

    # ---- files: whole or not at all -------------------------------------------------------------

    def save_metrics(self, split, metrics, combined=True):
        if not self.is_world_process_zero():
            return
        write_json(os.path.join(self.args.output_dir, f"{split}_results.json"), metrics)
        if combined:
            path = os.path.join(self.args.output_dir, "all_results.json")
            existing = json.load(open(path)) if os.path.isfile(path) else {}
            write_json(path, {**existing, **metrics})

    def save_state(self):
        if self.is_world_process_zero():
            path = os.path.join(self.args.output_dir, "trainer_state.json")
            self.state.save_to_json(f"{path}.tmp")
            os.replace(f"{path}.tmp", path)

    # ---- loss -----------------------------------------------------------------------------------

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        outputs = model(**inputs)
        loss = outputs["loss"] if isinstance(outputs, dict) else outputs[0]
        if self.teacher is not None and model.training:
            with torch.no_grad():
                teacher_outputs = self.teacher(**{k: v for k, v in inputs.items() if k in _MODEL_INPUTS})
            distill = distillation_loss(outputs, teacher_outputs, self.logit_keys, self.temperature, self.regression)
            self._loss_parts["student_loss"] += float(loss.detach())
            self._loss_parts["distill_loss"] += float(distill.detach())
            self._loss_parts["batches"] += 1
            loss = combine_losses(loss, distill, self.hardness)
        return (loss, outputs) if return_outputs else loss

    # ---- logging --------------------------------------------------------------------------------

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log: add what the recipe and the teacher are doing
            if self.targeted_names:
                params = dict(self.model.named_parameters())
                logs["sparsity"] = round(zero_fraction(params[n] for n in self.targeted_names), 4)
            batches = self._loss_parts.pop("batches")
            if batches:
                for key in ("student_loss", "distill_loss"):
                    logs[key] = round(self._loss_parts[key] / batches, 4)
            self._loss_parts = {"student_loss": 0.0, "distill_loss": 0.0, "batches": 0}
        super().log(logs, start_time)


class _ResumableScheduledOptimizer(ScheduledOptimizer):
    """ScheduledOptimizer inherits torch's state_dict / load_state_dict, which act on the wrapper's own attributes:
    a checkpoint would restore nothing into the wrapped optimizer. Forward them to it."""

    def state_dict(self):
        return self._wrapper.wrapped_optimizer.state_dict()

    def load_state_dict(self, state_dict):
        self._wrapper.wrapped_optimizer.load_state_dict(state_dict)


class GracefulStop(TrainerCallback):
    """On SIGINT or SIGTERM, finish the current optimizer step, save a checkpoint and stop, so that
    --resume_from_checkpoint continues from exactly there."""

    def __init__(self):
        self.signal = None
        self._previous = {}

    def _handle(self, signum, frame):
        if self.signal is not None:  # a second signal: stop now
            raise KeyboardInterrupt
        self.signal = signum
        logger.warning(f"Got {signal.Signals(signum).name}: saving a checkpoint after this step, then stopping "
                       f"(send it again to stop at once)")

    def on_train_begin(self, args, state, control, **kwargs):
        for signum in (signal.SIGINT, signal.SIGTERM):
            try:
                self._previous[signum] = signal.signal(signum, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def on_step_end(self, args, state, control, **kwargs):
        if self.signal is not None:
            control.should_save = True
            control.should_training_stop = True

    def on_train_end(self, args, state, control, **kwargs):
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous = {}


def quiet_sparseml_loggers():
    """Route the modifiers' own logs to a debug-level Python logger: sparseml's default would write log
    files into a sparse_logs/ folder in the working directory."""
    return LoggerManager([PythonLogger(logger=logging.getLogger("sparseml.modifiers"))], log_python=False)


# what a teacher is fed: the model inputs without the labels
_MODEL_INPUTS = ("input_ids", "attention_mask", "token_type_ids", "position_ids")
