"""The Trainer every script uses: the optimizer wrapped by SparseML's ScheduledOptimizer so the recipe
prunes as training goes, optional teacher distillation, and the sparsity logged with the loss."""

import json
import logging
import os
import signal
import time

import torch
from accelerate.utils import extract_model_from_parallel
from sparseml.pytorch.optim import ScheduledModifierManager
from transformers import Trainer, TrainerCallback
from transformers.trainer_utils import get_last_checkpoint

from sparsebert.errors import UsageError
from sparsebert.jsonfile import write_json
from sparsebert.distillation import combine_losses, distillation_loss, freeze_teacher
from sparsebert.families import TEACHER_INPUTS
from sparsebert.recipe import (apply_recipe_epochs, check_cyclic_learning_rates, load_recipe, save_recipe,
                               schedule_epochs, targeted_parameter_names)
from sparsebert.quantization import freeze_observers, is_quantized, quantization_modifiers
from sparsebert.recipe_run import RecipeLearningRate, RecipeRun, gradient_sampler
from sparsebert.seams import stop_mixed_precision, trainer_steps_per_epoch_and_max_steps
from sparsebert.sparsity import zero_fraction

logger = logging.getLogger(__name__)


class SparseMLTrainer(Trainer):
    """A Trainer driven by a SparseML recipe: add `recipe=` to any Hugging Face Trainer script.

    recipe: a recipe file (YAML, or Markdown with YAML front matter; recipe_args override its variables), or a
    ScheduledModifierManager already loaded (from recipe_path with recipe_args, when it came from a file); None
    trains without one. The recipe sets the training length (its last end_epoch) unless args.max_steps does; its
    modifiers change the model's structure here (layer pruning), start when train() does (every modifier
    initialized at the epoch of the checkpoint it resumes, quantization last) and act around every optimizer step.
    save_model writes the recipe beside the model as recipe.yaml: a quantized model reloads from it.
    teacher: a frozen model, already trained for the task, to distill from. A recipe with a DistillationModifier
    distills from it with its own settings; otherwise every `*logits` output of the student is matched to the
    teacher's: (1 - distill_hardness) x the student's loss + distill_hardness x T^2 x KL at `temperature` (MSE for
    a one-value regression head).
    quantize_attention: with a QuantizationModifier, attention's two matmuls are quantized too (not only Linear).
    """

    # compute_loss returns per-batch means: the Trainer divides them for gradient accumulation
    loss_is_scaled_for_ga = False

    def __init__(self, model=None, args=None, *, recipe: str | ScheduledModifierManager | None = None,
                 recipe_args: dict | None = None, recipe_path: str | None = None, teacher=None,
                 distill_hardness: float = 1.0, temperature: float = 2.0, quantize_attention: bool = True, **kwargs):
        # the Trainer creates output_dir right away; remember whether it was there before
        self._made_output_dir = args is None or not os.path.exists(args.output_dir)
        device = args.device if args is not None else None
        teacher = freeze_teacher(teacher, device) if teacher is not None else None
        if isinstance(recipe, str):
            recipe_path, recipe = recipe, load_recipe(recipe, recipe_args)
        self.recipe_path = recipe_path or "the recipe"  # for messages
        self._recipe_file, self._recipe_args = recipe_path, recipe_args or {}  # what save_model writes from
        manager = recipe
        if manager is not None and args is not None:
            apply_recipe_epochs(manager, args, self.recipe_path)  # the recipe sets the training length
        self.recipe_run = None
        self._targeted = []  # the parameters themselves: quantization and layer removal rename them
        if manager is not None:  # what the recipe does to the model's structure, and checks, before anything is written
            self.recipe_run = RecipeRun(manager, self.recipe_path,
                                        teacher=teacher if manager.distillation_modifiers else None,
                                        quantize_attention=quantize_attention)
            self.recipe_run.apply_structure(model)
            self.recipe_run.check_fisher_memory(model, device)
            targeted_parameter_names(manager, model, self.recipe_path)  # refuses a params pattern matching nothing
        super().__init__(model=model, args=args, **kwargs)
        if self.recipe_run is not None and quantization_modifiers(manager):
            self.add_callback(FullPrecisionForQuantization(self))
        # our own distillation loss only when the recipe does not distill itself: never both
        self.teacher = None if self.recipe_run is not None and self.recipe_run.distills else teacher
        self.distill_hardness = distill_hardness
        self.temperature = temperature
        self.steps_per_epoch = None
        self._loss_parts = {}  # sums of the loss's parts since the last log, and the batch count
        self._recipe_started = self._finalized = False
        self.graceful_stop = GracefulStop()
        self.add_callback(self.graceful_stop)
        self.training_clock = TrainingClock()
        self.add_callback(self.training_clock)

    @property
    def targeted_names(self) -> list[str]:
        """The current names of the parameters the recipe prunes: as sparseml resolved them once train() started
        the recipe, as the recipe's params patterns select them before."""
        if self.recipe_run is not None and not self._recipe_started:
            return targeted_parameter_names(self.recipe, self.model, self.recipe_path)
        names = {id(param): name for name, param in self.model.named_parameters()}
        return [names[id(param)] for param in self._targeted if id(param) in names]

    @property
    def recipe(self) -> ScheduledModifierManager | None:
        return self.recipe_run.manager if self.recipe_run is not None else None

    # ---- the recipe's schedule -----------------------------------------------------------------

    def set_initial_training_values(self, args, dataloader):
        """Capture the Trainer's own optimizer steps per epoch: a recipe epoch is one pass over the training
        data, whatever the batch size, gradient accumulation and number of processes."""
        values = super().set_initial_training_values(args, dataloader)
        self.steps_per_epoch, max_steps = trainer_steps_per_epoch_and_max_steps(values)
        if self.recipe is None:
            return values
        epochs = schedule_epochs(self.recipe)
        if epochs is not None and epochs * self.steps_per_epoch > max_steps + 1e-6:  # a smoke test's --max_steps
            logger.warning(f"The recipe {self.recipe_path} is cut short: it runs to epoch {epochs:g} "
                           f"({round(epochs * self.steps_per_epoch)} optimizer steps at {self.steps_per_epoch} per "
                           f"epoch) but training stops after {max_steps} (`max_steps`), at epoch "
                           f"{max_steps / self.steps_per_epoch:.3g}: what it schedules after that does not happen")
        try:
            check_cyclic_learning_rates(self.recipe, self.steps_per_epoch, max_steps / self.steps_per_epoch,
                                        self.recipe_path)
        except UsageError:
            self._remove_output_dir_if_untouched()
            raise
        return values

    def _remove_output_dir_if_untouched(self):
        output_dir = self.args.output_dir
        if self._made_output_dir and os.path.isdir(output_dir) and not os.listdir(output_dir):
            os.rmdir(output_dir)

    def create_optimizer(self, model=None):
        optimizer = super().create_optimizer(model)
        if self.recipe_run is None or self.recipe_run.optimizer is not None:
            return optimizer
        # on resume the Trainer has already restored global_step: the schedule starts from there
        resumed_steps = self.state.global_step if self.state is not None else 0
        self.optimizer = self.recipe_run.wrap_optimizer(optimizer, self.model, self.steps_per_epoch,
                                                        start_epoch=resumed_steps / self.steps_per_epoch)
        return self.optimizer

    def create_scheduler(self, num_training_steps, optimizer=None):
        """A recipe with learning-rate modifiers owns the learning rate: the Trainer's scheduler then keeps
        whatever the recipe set."""
        if self.lr_scheduler is None and self.recipe_run is not None and self.recipe_run.owns_learning_rate:
            names = ", ".join(sorted({type(m).__name__ for m in self.recipe.learning_rate_modifiers}))
            logger.info(f"Learning rate: set by the recipe's {names} (`learning_rate` {self.args.learning_rate:g} is "
                        f"only the optimizer's value before the recipe's first step; `lr_scheduler_type` and "
                        f"warmup flags are not used)")
            self.lr_scheduler = RecipeLearningRate(optimizer or self.optimizer)
            return self.lr_scheduler
        if self.lr_scheduler is None:
            logger.info(f"Learning rate: the Trainer's {self.args.lr_scheduler_type} schedule from `learning_rate` "
                        f"{self.args.learning_rate:g}")
        return super().create_scheduler(num_training_steps, optimizer)

    def train(self, resume_from_checkpoint=None, *args, **kwargs):
        """Train; at the end the recipe lets go of the model (see finalize_recipe), unless a signal stopped
        training early to be resumed."""
        resume = resume_from_checkpoint
        if resume is True:  # the Trainer's way of saying the newest checkpoint in output_dir
            resume = get_last_checkpoint(self.args.output_dir)
        self.training_clock.start(resume)
        self._start_recipe(resume)
        result = super().train(resume, *args, **kwargs)
        if self.graceful_stop.signal is None:
            self.finalize_recipe()
        return result

    def _start_recipe(self, checkpoint: str | None):
        """Initialize the recipe's modifiers at the epoch the checkpoint stopped at (0 for a fresh run): a
        structural one (quantization) is in place before the checkpoint's weights load into it."""
        if self.recipe_run is None or self._recipe_started:
            return
        self._recipe_started = True
        samplers = self.recipe_run.gradient_samplers
        grad_sampler = (gradient_sampler(self.model, self.train_dataset, self.data_collator, samplers[0].num_grads)
                        if samplers else None)
        # what sparseml itself resolved the recipe's params to (e.g. __ALL_PRUNABLE__) is what gets reported
        self._targeted = self.recipe_run.initialize(self.model, checkpoint_epoch(checkpoint), grad_sampler)
        self.model.to(self.args.device)  # quantization may have added observers on the CPU

    def finalize_recipe(self):
        """Detach the recipe's hooks from the model; the pruned zeros stay in the weights, layers the recipe
        removed are gone for good, a quantized model keeps the ranges it learned. Once is enough."""
        if self.recipe_run is None or self._finalized:
            return
        self.recipe_run.finalize(self.model)
        if is_quantized(self.model):
            freeze_observers(self.model)
        self._finalized = True

    # ---- files: whole or not at all -------------------------------------------------------------

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False):
        """The model the HF way, and the recipe beside it (recipe.yaml): a quantized model is rebuilt from it."""
        super().save_model(output_dir, _internal_call)
        if self.recipe is not None and self.is_world_process_zero():
            save_recipe(self.recipe, self._recipe_file, self._recipe_args, output_dir or self.args.output_dir)

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
        if model.training and self.teacher is not None:
            with torch.no_grad():
                teacher_outputs = self.teacher(**{k: v for k, v in inputs.items() if k in TEACHER_INPUTS})
            distill = distillation_loss(outputs, teacher_outputs, self.temperature)
            self._add_loss_parts(student_loss=loss, distill_loss=distill)
            loss = combine_losses(loss, distill, self.distill_hardness)
        if model.training and self.recipe_run is not None:  # its DistillationModifier, if any, acts here
            student_loss = loss
            loss = self.recipe_run.loss_update(loss, model, outputs, inputs)
            if self.recipe_run.distills:
                self._add_loss_parts(student_loss=student_loss)
        return (loss, outputs) if return_outputs else loss

    def _add_loss_parts(self, **parts):
        for key, value in parts.items():
            self._loss_parts[key] = self._loss_parts.get(key, 0.0) + float(value.detach())
        self._loss_parts["batches"] = self._loss_parts.get("batches", 0) + 1

    # ---- logging --------------------------------------------------------------------------------

    def log(self, logs, start_time=None):
        if "loss" in logs:  # a training log: add what the recipe and the teacher are doing
            if self._targeted:
                logs["sparsity"] = round(zero_fraction(self._targeted), 4)
            batches = self._loss_parts.pop("batches", 0)
            for key, total in self._loss_parts.items():
                logs[key] = round(total / batches, 4)
            self._loss_parts = {}
        super().log(logs, start_time)


class FullPrecisionForQuantization(TrainerCallback):
    """Quantization-aware training runs in full precision: when the recipe's QuantizationModifier starts, mixed
    precision (--fp16 / --bf16 on a GPU) stops: autocast comes off the model's forward and the loss scaler goes."""

    def __init__(self, trainer):
        self.trainer = trainer

    def on_step_begin(self, args, state, control, **kwargs):
        accelerator = self.trainer.accelerator
        epoch = state.global_step / self.trainer.steps_per_epoch
        starts = min(m.start_epoch for m in quantization_modifiers(self.trainer.recipe))
        if not accelerator.native_amp or epoch < starts:  # (sparseml's qat_active answers per whole epoch)
            return
        extract_model_from_parallel(self.trainer.model, keep_fp32_wrapper=False)
        stop_mixed_precision(accelerator, self.trainer.optimizer)
        logger.info(f"Mixed precision off from step {state.global_step}: quantization-aware training starts "
                    f"(epoch {epoch:.2f})")


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


class TrainingClock(TrainerCallback):
    """Training time over every attempt of a run resumed from checkpoints (the Trainer's train_runtime times
    the last attempt only): each checkpoint keeps the seconds spent up to its step, and a resumed run adds its
    own to those. Unknown (None) after resuming from a checkpoint saved without them."""

    file_name = "training_time.json"

    def __init__(self):
        self.start(None)

    def start(self, resume_from_checkpoint):
        self.started, self.ended, self.before = time.monotonic(), None, 0.0
        if isinstance(resume_from_checkpoint, str):
            path = os.path.join(resume_from_checkpoint, self.file_name)
            self.before = None
            if os.path.isfile(path):
                with open(path) as handle:
                    self.before = json.load(handle)["train_seconds"]

    def seconds(self) -> float | None:
        if self.before is None:
            return None
        return self.before + (self.ended or time.monotonic()) - self.started

    def on_train_end(self, args, state, control, **kwargs):
        self.ended = time.monotonic()  # saving the model afterwards is not training

    def on_save(self, args, state, control, **kwargs):
        folder = os.path.join(args.output_dir, f"checkpoint-{state.global_step}")
        if self.before is not None and state.is_world_process_zero and os.path.isdir(folder):
            write_json(os.path.join(folder, self.file_name),
                       {"global_step": state.global_step, "train_seconds": round(self.seconds(), 1)})


def checkpoint_epoch(checkpoint: str | None) -> float:
    """The epoch a run resumed from this checkpoint starts at (0 for a fresh run), from its trainer_state.json."""
    state = os.path.join(checkpoint, "trainer_state.json") if checkpoint else None
    if not state or not os.path.isfile(state):
        return 0.0
    with open(state) as handle:
        return float(json.load(handle).get("epoch") or 0.0)
