#!/usr/bin/env python
"""Fine-tune and sparsify a BERT-family model for extractive question answering (SQuAD v1.1 / v2.0).

A SparseML recipe (--nm_prune_config) prunes the model while it trains; evaluation reports EM/F1; the result
can be exported to ONNX (--do_onnx_export) and is checked against PyTorch. With --teacher_model_name_or_path
the model also learns from a teacher (see run_distill_qa.py).
"""

import sparsebert  # noqa: F401  (first: an unsupported Python is refused in one line)

import logging
import os
from dataclasses import dataclass, field

from transformers import AutoModelForQuestionAnswering, DataCollatorWithPadding, set_seed

from sparsebert import pipeline
from sparsebert.arguments import ModelArguments, SparseTrainingArguments, SparsificationArguments
from sparsebert.cli import parse_args, run_cli, setup_logging
from sparsebert.errors import UsageError
from sparsebert.jsonfile import write_json
from sparsebert.layer_dropping import drop_layers_if_asked
from sparsebert.metrics import squad_v1_metrics, squad_v2_metrics
from sparsebert.onnx_export import batch_from_features
from sparsebert.sparsity import sparsity_report
from utils_qa import (check_doc_stride, drop_misaligned_answers, load_squad_datasets, postprocess_qa_predictions,
                      tokenize_squad)

logger = logging.getLogger(__name__)

QA_OUTPUTS = ("start_logits", "end_logits")


@dataclass
class DataTrainingArguments:
    dataset_name: str | None = field(default="squad", metadata={"help": "Hub dataset (when no local files)."})
    dataset_config_name: str | None = field(default=None, metadata={"help": "Hub dataset configuration."})
    train_file: str | None = field(default=None, metadata={"help": "Official SQuAD JSON, or JSON / JSON Lines rows."})
    validation_file: str | None = field(default=None, metadata={"help": "Same formats as --train_file."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using the cache."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenizing."})
    max_seq_length: int = field(default=384, metadata={"help": "Tokens per feature (question + context window)."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every feature to --max_seq_length."})
    doc_stride: int = field(default=128, metadata={"help": "Overlap, in tokens, between windows of a long context."})
    max_query_length: int = field(default=64, metadata={"help": "Question tokens kept; longer questions are cut."})
    n_best_size: int = field(default=20, metadata={"help": "Start and end candidates searched per feature."})
    max_answer_length: int = field(default=30, metadata={"help": "Longest answer, in tokens."})
    version_2_with_negative: bool = field(default=False, metadata={"help": "SQuAD v2.0: questions may have no answer."})
    null_score_diff_threshold: float = field(
        default=0.0, metadata={"help": "v2.0: answer '' when null score - best span score exceeds this."}
    )
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many evaluation examples."})
    test_file: str | None = field(default=None, metadata={"help": "Questions to answer with --do_predict (the "
                                                                  "formats above; answers not needed)."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Answer only this many questions."})

    def check(self):
        """What no data can make right; the stride is checked against the questions themselves once they are read
        (utils_qa.check_doc_stride), as ordinary questions are far shorter than --max_query_length."""
        if self.max_query_length + 3 >= self.max_seq_length:
            raise UsageError(f"--max_query_length {self.max_query_length} leaves no room for context in "
                             f"--max_seq_length {self.max_seq_length}")
        if self.doc_stride >= self.max_seq_length:
            raise UsageError(f"--doc_stride {self.doc_stride} must be smaller than --max_seq_length "
                             f"{self.max_seq_length}")


# the flags: these dataclasses' fields, TrainingArguments' last
ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, SparsificationArguments, SparseTrainingArguments)


def main(argv=None):
    model_args, data_args, sparse_args, training_args = parse_args(ARGUMENT_CLASSES, argv)
    setup_logging(training_args)
    data_args.check()
    if training_args.do_predict and not data_args.test_file:
        raise UsageError("--do_predict needs --test_file: the questions to answer (SQuAD JSON or rows)")
    pipeline.resolve_run_args(model_args, sparse_args, training_args)
    manager = pipeline.load_training_recipe(sparse_args, training_args, model_args, QA_OUTPUTS)
    set_seed(training_args.seed)

    need_eval = training_args.do_eval or sparse_args.do_onnx_export
    raw = load_squad_datasets(data_args, model_args.cache_dir, need_train=training_args.do_train, need_eval=need_eval,
                              need_test=training_args.do_predict)
    tokenizer, config = pipeline.load_tokenizer_and_config(model_args)
    pipeline.check_max_seq_length(data_args.max_seq_length, config)
    model = pipeline.load_model(model_args, AutoModelForQuestionAnswering, config)
    drop_layers_if_asked(model, model_args)
    teacher = (pipeline.load_teacher(model_args, AutoModelForQuestionAnswering, tokenizer, manager)
               if training_args.do_train else None)

    train_dataset = eval_examples = eval_dataset = test_examples = test_dataset = None
    with training_args.main_process_first(desc="dataset preprocessing"):
        if training_args.do_train:
            train_examples = _take(raw, "train", data_args.max_train_samples)
            train_examples = drop_misaligned_answers(train_examples)
            check_doc_stride(train_examples, tokenizer, data_args, "training")
            train_dataset = tokenize_squad(train_examples, tokenizer, data_args, train=True)
            if len(train_dataset) == 0:
                raise UsageError("the training set is empty after preprocessing (check --train_file and "
                                 "--max_train_samples)")
        if need_eval:
            eval_examples = _take(raw, "validation", data_args.max_eval_samples)
            check_doc_stride(eval_examples, tokenizer, data_args, "evaluation")
            eval_dataset = tokenize_squad(eval_examples, tokenizer, data_args, train=False)
        if training_args.do_predict:
            test_examples = _take(raw, "test", data_args.max_predict_samples)
            check_doc_stride(test_examples, tokenizer, data_args, "test")
            test_dataset = tokenize_squad(test_examples, tokenizer, data_args, train=False)

    def post_process(examples, features, raw_predictions):
        answers, null_score_diffs = postprocess_qa_predictions(
            examples, features, raw_predictions, version_2_with_negative=data_args.version_2_with_negative,
            n_best_size=data_args.n_best_size, max_answer_length=data_args.max_answer_length,
            null_score_diff_threshold=data_args.null_score_diff_threshold)
        references = {ex["id"]: ex["answers"]["text"] for ex in examples}
        return {"answers": answers, "null_score_diffs": null_score_diffs, "references": references}

    def compute_metrics(predictions):
        if data_args.version_2_with_negative:
            # the null score difference ranks questions by how surely they have no answer; the best_*_thresh
            # it yields is directly a --null_score_diff_threshold
            return squad_v2_metrics(predictions["answers"], predictions["references"], predictions["null_score_diffs"])
        return squad_v1_metrics(predictions["answers"], predictions["references"])

    from trainer_qa import QuestionAnsweringTrainer  # (sparseml loads here: the flags above are checked without it)

    trainer = QuestionAnsweringTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        eval_examples=eval_examples,
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None),
        post_process_function=post_process,
        compute_metrics=compute_metrics,
        **pipeline.sparsification_kwargs(manager, sparse_args, model_args, teacher),
    )

    report = metrics = onnx_report = None
    if training_args.do_train:
        report = pipeline.train_and_save(trainer, training_args, len(train_examples))

    if training_args.do_eval:
        evaluated = trainer.predict(eval_dataset, eval_examples, metric_key_prefix="eval")
        metrics = dict(evaluated.metrics, eval_samples=len(eval_examples))
        trainer.log(metrics)  # into the run's log history (and tensorboard) with its epoch, as evaluate() does
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)
        if trainer.is_world_process_zero():
            write_json(os.path.join(training_args.output_dir, "eval_predictions.json"),
                       evaluated.predictions["answers"])
            if data_args.version_2_with_negative:
                write_json(os.path.join(training_args.output_dir, "eval_null_odds.json"),
                           evaluated.predictions["null_score_diffs"])

    if training_args.do_predict:
        answered = trainer.predict(test_dataset, test_examples, metric_key_prefix="predict", labeled=False)
        if trainer.is_world_process_zero():
            path = os.path.join(training_args.output_dir, "predict_predictions.json")
            write_json(path, answered.predictions["answers"])
            if data_args.version_2_with_negative:
                write_json(os.path.join(training_args.output_dir, "predict_null_odds.json"),
                           answered.predictions["null_score_diffs"])
            logger.info(f"Answers to {len(test_examples)} questions of {data_args.test_file} written to {path}")

    if sparse_args.do_onnx_export:
        verify_batch = batch_from_features(eval_dataset)
        onnx_report = pipeline.export_and_verify(trainer, tokenizer, sparse_args, training_args, QA_OUTPUTS,
                                                 verify_batch)
    report = report or sparsity_report(trainer.model, trainer.targeted_names)
    pipeline.log_summary(training_args, metrics, report, onnx_report)


def _take(raw, split, limit):
    if split not in raw:
        raise UsageError(f"the data has no {split} split (pass --{'train' if split == 'train' else 'validation'}_file)")
    dataset = raw[split]
    return dataset.select(range(min(limit, len(dataset)))) if limit is not None else dataset


if __name__ == "__main__":
    run_cli(main)
