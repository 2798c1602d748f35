#!/usr/bin/env python
"""Sparsify a token-classification (NER) model from your own Hugging Face script: a task the project's
scripts do not ship, in the four steps of the seed's "integrate SparseML with other projects" section.

    pip install -e .        # once, from the repository root (requirements.txt does it): `import sparsebert`
    python examples/token_classification.py --model_name_or_path bert-base-cased \
        --train_file train.jsonl --validation_file dev.jsonl --recipe recipes/90sparsity2epoch.yaml \
        --output_dir out/ner90

(on the built-in demo: --model_name_or_path demo/tiny-bert --train_file demo/ner-train.jsonl
--validation_file demo/ner-dev.jsonl, after `python -m sparsebert.demo demo`)

Data: JSON Lines rows {"tokens": ["John", "lives", "in", "Paris"], "tags": ["B-PER", "O", "O", "B-LOC"]}.
Everything below is an ordinary Hugging Face token-classification script; the four marked lines are what
sparsification adds.
"""

from dataclasses import dataclass, field

import numpy as np
from datasets import load_dataset
from transformers import (AutoModelForTokenClassification, AutoTokenizer, DataCollatorForTokenClassification,
                          HfArgumentParser, TrainingArguments)

from sparsebert import SparseMLTrainer, export_onnx, sparsity_report  # 1. imports: the Trainer subclass, the exporter


@dataclass
class Arguments:
    model_name_or_path: str = field(metadata={"help": "A Hub name or a local folder."})
    train_file: str = field(metadata={"help": "JSON Lines rows with `tokens` and `tags`."})
    validation_file: str = field(metadata={"help": "The same format, for evaluation."})
    recipe: str | None = field(default=None, metadata={"help": "A SparseML recipe (YAML or Markdown)."})
    max_seq_length: int = field(default=128)


ARGUMENT_CLASSES = (Arguments, TrainingArguments)


def main(argv=None):
    args, training_args = HfArgumentParser(ARGUMENT_CLASSES).parse_args_into_dataclasses(argv)
    data = load_dataset("json", data_files={"train": args.train_file, "validation": args.validation_file})
    labels = sorted({tag for tags in data["train"]["tags"] for tag in tags})
    tokenizer = AutoTokenizer.from_pretrained(args.model_name_or_path)
    model = AutoModelForTokenClassification.from_pretrained(
        args.model_name_or_path, num_labels=len(labels), id2label=dict(enumerate(labels)),
        label2id={label: i for i, label in enumerate(labels)})

    def tokenize(rows):
        """Words to sub-word tokens; each word's label on its first token, -100 (ignored) on the others."""
        encoded = tokenizer(rows["tokens"], is_split_into_words=True, truncation=True,
                            max_length=args.max_seq_length)
        encoded["labels"] = []
        for row, tags in enumerate(rows["tags"]):
            words, previous, row_labels = encoded.word_ids(row), None, []
            for word in words:
                row_labels.append(-100 if word is None or word == previous else labels.index(tags[word]))
                previous = word
            encoded["labels"].append(row_labels)
        return encoded

    data = data.map(tokenize, batched=True, remove_columns=data["train"].column_names)

    def accuracy(prediction):
        predicted, gold = np.argmax(prediction.predictions, axis=-1), prediction.label_ids
        return {"accuracy": float((predicted == gold)[gold != -100].mean())}

    trainer = SparseMLTrainer(
        model=model, args=training_args, train_dataset=data["train"], eval_dataset=data["validation"],
        processing_class=tokenizer, data_collator=DataCollatorForTokenClassification(tokenizer),
        compute_metrics=accuracy,
        recipe=args.recipe,  # 2. the recipe: it prunes as training goes and sets the number of epochs
    )
    trainer.train()  # 3. train: the masks are applied at every optimizer step
    trainer.save_model()
    metrics = trainer.evaluate()
    trainer.save_metrics("eval", metrics)
    # 4. export: model.onnx with config and tokenizer beside it, compared with PyTorch on a fresh batch
    report = export_onnx(trainer.model, tokenizer, training_args.output_dir, ["logits"])
    sparsity = sparsity_report(trainer.model, trainer.targeted_names)
    print(f"accuracy {metrics['eval_accuracy']:.3f}; pruned weights {sparsity['targeted_sparsity']:.1%} sparse; "
          f"ONNX {'matches' if report['parity_ok'] else 'DIFFERS from'} PyTorch "
          f"(max abs diff {report['max_abs_diff']:.1e})")
    return metrics, sparsity, report


if __name__ == "__main__":
    main()
