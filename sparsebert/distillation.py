"""Teacher-student distillation: the loss, and the checks and loading of a teacher."""

import logging

import torch
import torch.nn.functional as F

from sparsebert.errors import UsageError

logger = logging.getLogger(__name__)


def soft_kl(student_logits, teacher_logits, temperature: float):
    """KL(softmax(teacher / T) || softmax(student / T)) over the last axis, mean over the batch, times T²
    (so the gradient keeps its size as T changes, as in Hinton et al.)."""
    student_log_probs = F.log_softmax(student_logits / temperature, dim=-1)
    teacher_probs = F.softmax(teacher_logits / temperature, dim=-1)
    return F.kl_div(student_log_probs, teacher_probs, reduction="batchmean") * temperature**2


def distillation_loss(student_outputs, teacher_outputs, temperature: float):
    """The teacher's part of the loss, averaged over the model's `*logits` outputs (start and end for QA).

    A one-value regression head (STS-B) has no distribution to match: its part is the MSE to the teacher's score.
    """
    parts = []
    for key in [key for key in student_outputs.keys() if key.endswith("logits")]:
        student, teacher = student_outputs[key].float(), teacher_outputs[key].detach().float()
        regression = student.shape[-1] == 1
        parts.append(F.mse_loss(student, teacher) if regression else soft_kl(student, teacher, temperature))
    return sum(parts) / len(parts)


def combine_losses(student_loss, distill_loss, hardness: float):
    """(1 − hardness) · the student's own loss + hardness · the distillation loss."""
    return (1.0 - hardness) * student_loss + hardness * distill_loss


def check_distillation_args(model_args):
    if not 0.0 <= model_args.distill_hardness <= 1.0:
        raise UsageError(f"`distill_hardness` {model_args.distill_hardness} must lie between 0 and 1")
    if model_args.temperature <= 0:
        raise UsageError(f"`temperature` {model_args.temperature} must be positive")


def check_same_vocabulary(student_tokenizer, teacher_tokenizer, teacher_name: str):
    """Teacher and student read the same input ids, so their vocabularies must be identical."""
    if student_tokenizer.get_vocab() != teacher_tokenizer.get_vocab():
        student_vocab, teacher_vocab = student_tokenizer.get_vocab(), teacher_tokenizer.get_vocab()
        differing = next((t for t, i in teacher_vocab.items() if student_vocab.get(t) != i), None)
        raise UsageError(
            f"`teacher_model_name_or_path` {teacher_name}: its vocabulary differs from the student's "
            f"({len(teacher_vocab)} vs {len(student_vocab)} tokens, e.g. {differing!r}); teacher and student must "
            f"share one tokenizer because they are fed the same input ids"
        )


def freeze_teacher(teacher: torch.nn.Module, device) -> torch.nn.Module:
    teacher.to(device)
    teacher.eval()
    for param in teacher.parameters():
        param.requires_grad_(False)
    return teacher
