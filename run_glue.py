#!/usr/bin/env python
"""Fine-tune and sparsify a BERT-family model on a GLUE task, optionally distilling from a teacher.

Data come from the Hub (`glue`), from --train_file / --validation_file (CSV, JSON, JSON Lines with the HF
`glue` columns), or from --glue_data_dir, a task folder of the original GLUE distribution. MNLI is evaluated
on both its matched and mismatched dev sets.
"""

import sparsebert  # noqa: F401  (first: an unsupported Python is refused in one line)

import logging
import os
from dataclasses import dataclass, field

import numpy as np
from transformers import AutoModelForSequenceClassification, DataCollatorWithPadding, set_seed

from sparsebert import pipeline
from sparsebert.arguments import ModelArguments, SparseTrainingArguments, SparsificationArguments
from sparsebert.cli import parse_args, run_cli, setup_logging
from sparsebert.errors import UsageError
from sparsebert.glue import compute_task_metrics, get_task, label_text, load_glue_datasets, load_glue_test_file
from sparsebert.layer_dropping import drop_layers_if_asked
from sparsebert.onnx_export import batch_from_features
from sparsebert.sparsity import sparsity_report

logger = logging.getLogger(__name__)


@dataclass
class DataTrainingArguments:
    task_name: str = field(default=None, metadata={"help": "GLUE task: cola, sst2, mrpc, qqp, stsb, mnli, qnli, "
                                                           "rte or wnli (any case: MNLI works)."})
    dataset_name: str = field(default="glue", metadata={"help": "Hub dataset (when no local files)."})
    glue_data_dir: str | None = field(default=None, metadata={"help": "Task folder of the original GLUE "
                                                                      "distribution (train.tsv, dev.tsv, ...)."})
    train_file: str | None = field(default=None, metadata={"help": "CSV / JSON / JSON Lines with the glue columns."})
    validation_file: str | None = field(default=None, metadata={"help": "Same formats; MNLI: the matched dev set."})
    validation_mismatched_file: str | None = field(default=None, metadata={"help": "MNLI's mismatched dev set."})
    max_seq_length: int = field(default=128, metadata={"help": "Tokens per example after tokenization."})
    pad_to_max_length: bool = field(default=False, metadata={"help": "Pad every example to --max_seq_length."})
    overwrite_cache: bool = field(default=False, metadata={"help": "Re-tokenize instead of using the cache."})
    preprocessing_num_workers: int | None = field(default=None, metadata={"help": "Processes for tokenizing."})
    max_train_samples: int | None = field(default=None, metadata={"help": "Use only this many training examples."})
    max_eval_samples: int | None = field(default=None, metadata={"help": "Use only this many evaluation examples."})
    test_file: str | None = field(default=None, metadata={"help": "Rows to predict with --do_predict (the task's "
                                                                  "text columns; no labels needed)."})
    max_predict_samples: int | None = field(default=None, metadata={"help": "Predict only this many rows."})


# the flags: these dataclasses' fields, TrainingArguments' last
ARGUMENT_CLASSES = (ModelArguments, DataTrainingArguments, SparsificationArguments, SparseTrainingArguments)


def main(argv=None):
    model_args, data_args, sparse_args, training_args = parse_args(ARGUMENT_CLASSES, argv)
    setup_logging(training_args)
    task_name, task = get_task(data_args.task_name)
    if training_args.do_predict and not data_args.test_file:
        raise UsageError("--do_predict needs --test_file: the rows to predict (the task's text columns)")
    pipeline.resolve_run_args(model_args, sparse_args, training_args)
    manager = pipeline.load_training_recipe(sparse_args, training_args, model_args, ("logits",),
                                            regression=task.is_regression)
    set_seed(training_args.seed)

    need_eval = training_args.do_eval or sparse_args.do_onnx_export
    raw = load_glue_datasets(task_name, task, data_args, model_args.cache_dir, need_train=training_args.do_train,
                             need_eval=need_eval)
    if training_args.do_predict:
        raw["test"] = load_glue_test_file(task, data_args.test_file)
    labels = {} if task.is_regression else {"id2label": dict(enumerate(task.label_names)),
                                            "label2id": {n: i for i, n in enumerate(task.label_names)}}
    config_kwargs = {"num_labels": task.num_labels, "finetuning_task": task_name, **labels}
    if task.is_regression:
        config_kwargs["problem_type"] = "regression"
    tokenizer, config = pipeline.load_tokenizer_and_config(model_args, **config_kwargs)
    pipeline.check_max_seq_length(data_args.max_seq_length, config)
    model = pipeline.load_model(model_args, AutoModelForSequenceClassification, config)
    drop_layers_if_asked(model, model_args)
    teacher = (pipeline.load_teacher(model_args, AutoModelForSequenceClassification, tokenizer, manager,
                                     num_labels=task.num_labels) if training_args.do_train else None)

    def tokenize(batch):
        texts = [batch[column] for column in task.text_columns]
        return tokenizer(*texts, truncation=True, max_length=data_args.max_seq_length,
                         padding="max_length" if data_args.pad_to_max_length else False)

    splits = {}
    with training_args.main_process_first(desc="dataset preprocessing"):
        for split, dataset in raw.items():
            limit = {"train": data_args.max_train_samples, "test": data_args.max_predict_samples}.get(
                split, data_args.max_eval_samples)
            if limit is not None:
                dataset = dataset.select(range(min(limit, len(dataset))))
            splits[split] = dataset.map(tokenize, batched=True, num_proc=data_args.preprocessing_num_workers,
                                        remove_columns=list(task.text_columns),
                                        load_from_cache_file=not data_args.overwrite_cache,
                                        desc=f"Tokenizing {split}")
    if training_args.do_train and len(splits["train"]) == 0:
        raise UsageError("the training set is empty (check the training data and --max_train_samples)")

    def predicted(predictions):
        logits = predictions[0] if isinstance(predictions, tuple) else predictions
        return np.squeeze(logits, axis=-1) if task.is_regression else np.argmax(logits, axis=-1)

    def compute_metrics(prediction):
        return compute_task_metrics(task, predicted(prediction.predictions), prediction.label_ids)

    def write_predictions(name, values, labels=None):
        """index, prediction (and the gold label) per row, as label names: to check or ensemble them."""
        if trainer.is_world_process_zero():
            rows = [[str(i), label_text(task, v)] for i, v in enumerate(values)]
            if labels is not None:
                rows = [row + [label_text(task, label)] for row, label in zip(rows, labels)]
            header = ["index", "prediction"] + (["label"] if labels is not None else [])
            with open(os.path.join(training_args.output_dir, name), "w") as handle:
                handle.writelines("\t".join(row) + "\n" for row in [header] + rows)

    eval_split = task.eval_splits[0]
    from sparsebert.trainer import SparseMLTrainer  # (sparseml loads here: the flags above are checked without it)

    trainer = SparseMLTrainer(
        model=model,
        args=training_args,
        train_dataset=splits.get("train"),
        eval_dataset=splits.get(eval_split),
        processing_class=tokenizer,
        data_collator=DataCollatorWithPadding(tokenizer, pad_to_multiple_of=8 if training_args.fp16 else None),
        compute_metrics=compute_metrics,
        **pipeline.sparsification_kwargs(manager, sparse_args, model_args, teacher),
    )

    report = metrics = onnx_report = None
    if training_args.do_train:
        report = pipeline.train_and_save(trainer, training_args, len(splits["train"]))

    if training_args.do_eval:
        metrics = {}
        for split, prefix in zip(task.eval_splits, ("eval", "eval_mm")):  # MNLI: matched, then mismatched
            if split not in splits:  # MNLI given its matched dev set alone
                continue
            output = trainer.predict(splits[split], metric_key_prefix=prefix)
            metrics.update(output.metrics, **{f"{prefix}_samples": len(splits[split])})
            write_predictions(f"{prefix}_predictions_{task_name}.txt", predicted(output.predictions),
                              splits[split]["label"])
        trainer.log(metrics)  # into the run's log history (and tensorboard) with its epoch, as evaluate() does
        trainer.log_metrics("eval", metrics)
        trainer.save_metrics("eval", metrics)

    if training_args.do_predict:
        output = trainer.predict(splits["test"], metric_key_prefix="predict")
        write_predictions(f"predict_results_{task_name}.txt", predicted(output.predictions))
        logger.info(f"Predictions for {len(splits['test'])} rows of {data_args.test_file} written to "
                    f"{training_args.output_dir}/predict_results_{task_name}.txt")

    if sparse_args.do_onnx_export:
        verify_batch = batch_from_features(splits[eval_split].remove_columns("label"))
        onnx_report = pipeline.export_and_verify(trainer, tokenizer, sparse_args, training_args, ("logits",),
                                                 verify_batch)
    report = report or sparsity_report(trainer.model, trainer.targeted_names)
    pipeline.log_summary(training_args, metrics, report, onnx_report)


if __name__ == "__main__":
    run_cli(main)
