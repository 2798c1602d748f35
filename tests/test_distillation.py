"""Teacher-student distillation and layer dropping (run_distill_qa.py)."""

import hashlib
import json
import math
import os
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForQuestionAnswering, BertConfig, BertForQuestionAnswering, TrainingArguments

import run_qa
from conftest import RECIPES, REPO
from helpers import listing, qa_args, refused_on_the_command_line
from sparsebert.errors import UsageError
from sparsebert.demo import make_bert, make_tokenizer
from sparsebert.distillation import combine_losses, distillation_loss, soft_kl
from sparsebert.layer_dropping import drop_layers, select_layers
from sparsebert.trainer import SparseMLTrainer


def _kl_by_hand(student, teacher, temperature):
    def softmax(values):
        exps = [math.exp(v / temperature) for v in values]
        return [e / sum(exps) for e in exps]
    p, q = softmax(teacher), softmax(student)
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def test_soft_kl_is_the_batch_mean_times_t_squared():
    student = [[1.0, 2.0, 0.5], [0.0, -1.0, 3.0]]
    teacher = [[0.5, 2.5, 0.0], [1.0, 1.0, 1.0]]
    for temperature in (1.0, 2.0, 4.0):
        expected = temperature**2 * sum(_kl_by_hand(s, t, temperature) for s, t in zip(student, teacher)) / 2
        got = soft_kl(torch.tensor(student), torch.tensor(teacher), temperature)
        assert float(got) == pytest.approx(expected, rel=1e-5)
    assert float(soft_kl(torch.tensor(teacher), torch.tensor(teacher), 2.0)) == pytest.approx(0.0, abs=1e-7)


def test_qa_distillation_averages_start_and_end_against_their_own_teacher_heads():
    student = {"start_logits": torch.tensor([[1.0, 0.0, 0.0]]), "end_logits": torch.tensor([[0.0, 0.0, 1.0]])}
    teacher = {"start_logits": torch.tensor([[3.0, 0.0, 0.0]]), "end_logits": torch.tensor([[0.0, 0.0, 3.0]])}
    loss = distillation_loss(student, teacher, temperature=2.0)
    start = 4 * _kl_by_hand([1, 0, 0], [3, 0, 0], 2.0)
    end = 4 * _kl_by_hand([0, 0, 1], [0, 0, 3], 2.0)
    assert float(loss) == pytest.approx((start + end) / 2, rel=1e-5)
    # the seed compared the end head with the start one: a student matching both teacher heads (which differ
    # from each other) must cost nothing
    matching = {"start_logits": teacher["start_logits"], "end_logits": teacher["end_logits"]}
    assert float(distillation_loss(matching, teacher, 2.0)) == pytest.approx(0, abs=1e-6)


def test_hardness_mixes_the_two_losses():
    student_loss, distill = torch.tensor(2.0), torch.tensor(5.0)
    assert float(combine_losses(student_loss, distill, 0.0)) == 2.0
    assert float(combine_losses(student_loss, distill, 1.0)) == 5.0
    assert float(combine_losses(student_loss, distill, 0.25)) == pytest.approx(0.75 * 2 + 0.25 * 5)


def test_trainer_loss_at_hardness_0_and_1(tmp_path):
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    student, teacher = make_bert(hidden_size=32, seed=1, **no_dropout), make_bert(hidden_size=32, seed=2, **no_dropout)
    batch = {"input_ids": torch.randint(5, 90, (3, 12)), "attention_mask": torch.ones(3, 12, dtype=torch.long),
             "start_positions": torch.tensor([1, 2, 3]), "end_positions": torch.tensor([2, 4, 3])}
    args = TrainingArguments(output_dir=str(tmp_path), report_to="none", use_cpu=True)
    student.train()
    for hardness, expected in ((0.0, "own"), (1.0, "kl")):
        trainer = SparseMLTrainer(model=student, args=args, teacher=teacher, distill_hardness=hardness,
                                  temperature=2.0)
        loss = trainer.compute_loss(student, dict(batch))
        outputs = student(**batch)
        with torch.no_grad():
            teacher_outputs = teacher(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        kl = distillation_loss(outputs, teacher_outputs, 2.0)
        assert float(loss) == pytest.approx(float(outputs.loss if expected == "own" else kl), rel=1e-6)
    assert not any(p.requires_grad for p in teacher.parameters()) and not teacher.training


def test_seed_layer_choice_and_evenly_spaced_layers():
    assert select_layers(12, 1) == [0]
    assert select_layers(12, 3) == [0, 5, 11]
    assert select_layers(12, 6) == [0, 2, 4, 6, 8, 11]
    assert select_layers(12, 9) == [0, 2, 3, 4, 5, 7, 8, 9, 11]
    assert select_layers(6, 3) == [0, 2, 5]  # MiniLM depth: first and last kept
    assert select_layers(12, 4, "evenly_spaced") == [0, 4, 7, 11]
    assert select_layers(12, 2, "first") == [0, 1]
    with pytest.raises(UsageError, match="`layers_to_keep` 7: the model has 6 encoder layers"):
        select_layers(6, 7)


def test_bert_base_parameter_counts_match_the_seed_table():
    expected = {12: 108_893_186, 9: 87_629_570, 6: 66_365_954, 3: 45_102_338, 1: 30_926_594}
    for keep, count in expected.items():
        with torch.device("meta"):  # shapes only: no weights are made
            model = BertForQuestionAnswering(BertConfig())  # bert-base-uncased: 12 x 768, vocabulary 30522
        drop_layers(model, select_layers(12, keep))
        assert sum(p.numel() for p in model.parameters()) == count
        assert model.config.num_hidden_layers == keep


def test_teacher_with_another_vocabulary_is_refused(qa_model_dir, squad_files, tmp_path):
    teacher_dir = tmp_path / "teacher"
    make_bert(hidden_size=32, vocab_size=100).save_pretrained(teacher_dir)
    tokenizer = make_tokenizer()
    tokenizer.add_tokens(["zebra"])
    tokenizer.save_pretrained(teacher_dir)
    with refused_on_the_command_line(r"--teacher_model_name_or_path .*teacher: its vocabulary differs"):
        run_qa.main(qa_args(qa_model_dir, squad_files, tmp_path / "out", "--do_train",
                            "--teacher_model_name_or_path", str(teacher_dir)))
    assert not (tmp_path / "out").exists()


def _digest(folder):
    return {name: hashlib.md5(open(os.path.join(folder, name), "rb").read()).hexdigest()
            for name in sorted(os.listdir(folder))}


def test_prune_distill_drop_layers_and_export_end_to_end(squad_files, tmp_path):
    student_dir, teacher_dir = tmp_path / "student", tmp_path / "teacher"
    make_bert(hidden_size=32, num_layers=3, seed=3).save_pretrained(student_dir)
    make_tokenizer().save_pretrained(student_dir)
    make_bert(hidden_size=32, num_layers=2, seed=4).save_pretrained(teacher_dir)
    make_tokenizer().save_pretrained(teacher_dir)
    teacher_before = _digest(teacher_dir)
    output_dir = tmp_path / "out"
    argv = qa_args(str(student_dir), squad_files, output_dir, "--do_train", "--do_eval", "--do_onnx_export",
                   "--nm_prune_config", os.path.join(RECIPES, "80sparsity2epoch.yaml"), "--logging_steps", "5",
                   "--teacher_model_name_or_path", str(teacher_dir), "--distill_hardness", "0.5",
                   "--temperature", "2.0", "--layers_to_keep", "2")
    argv[argv.index("--model_name_or_path")] = "--student_model_name_or_path"
    done = subprocess.run([sys.executable, os.path.join(REPO, "run_distill_qa.py"), *argv], capture_output=True,
                          text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert "Layer dropping: kept encoder layers [0, 2] of 3" in done.stdout + done.stderr

    assert _digest(teacher_dir) == teacher_before  # the teacher is never trained nor saved over
    reloaded = AutoModelForQuestionAnswering.from_pretrained(output_dir)
    assert reloaded.config.num_hidden_layers == 2 and len(reloaded.bert.encoder.layer) == 2
    report = json.load(open(output_dir / "sparsity_report.json"))
    assert report["targeted_sparsity"] == pytest.approx(0.80, abs=0.005)
    assert len([r for r in report["parameters"] if r["targeted"]]) == 12  # 6 matrices x the 2 kept layers
    assert json.load(open(output_dir / "onnx_parity.json"))["parity_ok"]
    history = json.load(open(output_dir / "trainer_state.json"))["log_history"]
    parts = [h for h in history if "distill_loss" in h]
    assert parts and all(h["student_loss"] > 0 and h["distill_loss"] >= 0 for h in parts)
    assert listing(teacher_dir) is not None


def test_the_teacher_shapes_only_the_training_loss(tmp_path):
    from helpers import random_qa_dataset
    from sparsebert.trainer import SparseMLTrainer

    data = random_qa_dataset(16)
    losses = []
    for teacher in (None, make_bert(hidden_size=32, seed=9)):
        args = TrainingArguments(output_dir=str(tmp_path / "out"), report_to="none", use_cpu=True, disable_tqdm=True,
                                 per_device_eval_batch_size=8)
        trainer = SparseMLTrainer(model=make_bert(hidden_size=32), args=args, eval_dataset=data, teacher=teacher,
                                  distill_hardness=1.0)
        losses.append(trainer.evaluate()["eval_loss"])
    assert losses[0] == pytest.approx(losses[1], rel=1e-6)  # hardness 1.0 in training; evaluation: the task loss
