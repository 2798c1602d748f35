"""A small built-in world to try the scripts without the Hub: a tiny BERT (random weights, word-level
vocabulary) and a synthetic SQuAD-style question set it can learn in a minute on a CPU.

    python -m sparsebert.demo demo        # writes demo/tiny-bert, demo/train-v1.1.json, demo/dev.jsonl (and
                                          # demo/ner-{train,dev}.jsonl for examples/token_classification.py)

Facts such as "the lamp is green." or "mia lives in oslo." fill each context; each question asks for one
of them by its subject, so answering needs reading the question, not guessing a position.
"""

import argparse
import json
import os
import random

from transformers import BertConfig, BertForQuestionAnswering, BertForSequenceClassification, BertTokenizerFast

OBJECTS = ["lamp", "chair", "table", "door", "kite", "boat", "cup", "hat", "book", "bike", "clock", "vase"]
COLORS = ["red", "blue", "green", "yellow", "black", "white", "purple", "orange", "brown", "grey"]
NAMES = ["mia", "leo", "ana", "omar", "lena", "ivan", "zoe", "raj", "emma", "noah", "sara", "tom"]
CITIES = ["oslo", "lima", "rome", "cairo", "paris", "tokyo", "delhi", "quito", "dakar", "seoul"]
YEARS = [str(y) for y in range(1950, 2000, 3)]

FACTS = [  # (statement, question, answer), one subject slot and one value slot each
    ("the {s} is {v} .", "what color is the {s} ?", OBJECTS, COLORS),
    ("{s} lives in {v} .", "where does {s} live ?", NAMES, CITIES),
    ("{s} was born in {v} .", "when was {s} born ?", NAMES, YEARS),
]
SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
FILLER = ["it", "rained", "all", "day", "and", "we", "stayed", "inside", "then", "there", "was", "music"]


def vocabulary() -> list[str]:
    words = set(FILLER + ["?", ".", ","])
    for statement, question, subjects, values in FACTS:
        words.update(statement.replace("{s}", "").replace("{v}", "").split())
        words.update(question.replace("{s}", "").split())
        words.update(subjects + values)
    return SPECIAL_TOKENS + sorted(words)


def make_tokenizer() -> BertTokenizerFast:
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(vocabulary())}, do_lower_case=True)


def make_bert(num_labels=None, hidden_size=64, num_layers=2, vocab_size=None, seed=0, **config_kwargs):
    """A random-weight BERT for QA (num_labels None) or sequence classification."""
    import torch

    torch.manual_seed(seed)
    config = BertConfig(vocab_size=vocab_size or len(vocabulary()), hidden_size=hidden_size,
                        num_hidden_layers=num_layers, num_attention_heads=4, intermediate_size=2 * hidden_size,
                        max_position_embeddings=128, **config_kwargs)
    if num_labels is None:
        return BertForQuestionAnswering(config)
    config.num_labels = num_labels
    return BertForSequenceClassification(config)


def make_qa_examples(num_contexts: int, seed: int = 0, questions_per_context: int = 2) -> list[dict]:
    """Flattened SQuAD rows (id, title, context, question, answers) with exact answer_start offsets."""
    rng = random.Random(seed)
    rows = []
    for c in range(num_contexts):
        sentences, facts = [], []
        for statement, question, subjects, values in rng.sample(FACTS * 2, k=4):
            subject, value = rng.choice(subjects), rng.choice(values)
            if any(f[0] == question and f[1] == subject for f in facts):
                continue  # one value per subject and relation keeps every answer unambiguous
            offset = sum(len(s) + 1 for s in sentences) + len(statement.split("{v}")[0].format(s=subject))
            facts.append((question, subject, value, offset))
            sentences.append(statement.format(s=subject, v=value))
            if rng.random() < 0.3:
                sentences.append(" ".join(rng.sample(FILLER, k=4)) + " .")
        context = " ".join(sentences)
        for q, (question, subject, value, start) in enumerate(rng.sample(facts, k=min(questions_per_context,
                                                                                       len(facts)))):
            assert context[start:start + len(value)] == value
            rows.append({"id": f"q{seed}-{c}-{q}", "title": f"context {c}", "context": context,
                         "question": question.format(s=subject), "answers": {"text": [value], "answer_start": [start]}})
    return rows


def make_ner_examples(count: int, seed: int = 0) -> list[dict]:
    """Token-classification rows {"tokens", "tags"}: demo facts, some after filler words, with people (PER),
    cities (LOC) and years (DATE) tagged, for the own-script example."""
    rng = random.Random(seed)
    kinds = {**{n: "PER" for n in NAMES}, **{c: "LOC" for c in CITIES}, **{y: "DATE" for y in YEARS}}
    rows = []
    for _ in range(count):
        statement, _, subjects, values = rng.choice(FACTS)
        words = statement.format(s=rng.choice(subjects), v=rng.choice(values)).split()
        if rng.random() < 0.5:
            words = rng.sample(FILLER, k=rng.randint(1, 3)) + words
        rows.append({"tokens": words, "tags": [f"B-{kinds[w]}" if w in kinds else "O" for w in words]})
    return rows


def to_official_squad(rows: list[dict]) -> dict:
    """The same rows in the official SQuAD layout: data -> paragraphs -> qas."""
    articles = {}
    for row in rows:
        paragraphs = articles.setdefault(row["title"], {})
        qas = paragraphs.setdefault(row["context"], [])
        qas.append({"id": row["id"], "question": row["question"],
                    "answers": [{"text": t, "answer_start": s}
                                for t, s in zip(row["answers"]["text"], row["answers"]["answer_start"])]})
    return {"version": "1.1", "data": [
        {"title": title, "paragraphs": [{"context": c, "qas": qas} for c, qas in paragraphs.items()]}
        for title, paragraphs in articles.items()]}


def write_demo(folder: str, train_contexts: int = 1500, dev_contexts: int = 150) -> dict:
    os.makedirs(folder, exist_ok=True)
    paths = {"model": os.path.join(folder, "tiny-bert"), "train": os.path.join(folder, "train-v1.1.json"),
             "dev": os.path.join(folder, "dev.jsonl"), "ner_train": os.path.join(folder, "ner-train.jsonl"),
             "ner_dev": os.path.join(folder, "ner-dev.jsonl")}
    make_bert().save_pretrained(paths["model"])
    make_tokenizer().save_pretrained(paths["model"])
    with open(paths["train"], "w") as handle:
        json.dump(to_official_squad(make_qa_examples(train_contexts, seed=1)), handle)
    with open(paths["dev"], "w") as handle:
        for row in make_qa_examples(dev_contexts, seed=2):
            handle.write(json.dumps(row) + "\n")
    for key, count, seed in (("ner_train", 400, 3), ("ner_dev", 80, 4)):  # for examples/token_classification.py
        with open(paths[key], "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in make_ner_examples(count, seed))
    return paths


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("folder", nargs="?", default="demo")
    parser.add_argument("--train_contexts", type=int, default=1500)
    parser.add_argument("--dev_contexts", type=int, default=150)
    args = parser.parse_args()
    for what, path in write_demo(args.folder, args.train_contexts, args.dev_contexts).items():
        print(f"{what}: {path}")
