"""Tiny models and data made inside the test run: no Hub, no ../shared."""

import json
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("WANDB_DISABLED", "true")

from sparsebert.demo import make_bert, make_qa_examples, make_tokenizer, to_official_squad  # noqa: E402

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RECIPES = os.path.join(REPO, "recipes")


@pytest.fixture(scope="session")
def qa_model_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("tiny-bert-qa")
    make_bert(hidden_size=32).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="session")
def squad_files(tmp_path_factory):
    """The same small question sets as an official SQuAD file and as flattened JSON Lines."""
    folder = tmp_path_factory.mktemp("squad")
    train_rows, dev_rows = make_qa_examples(60, seed=1), make_qa_examples(15, seed=2)
    paths = {"train": str(folder / "train-v1.1.json"), "dev": str(folder / "dev-v1.1.json"),
             "train_jsonl": str(folder / "train.jsonl"), "dev_jsonl": str(folder / "dev.jsonl")}
    for rows, official, flat in ((train_rows, paths["train"], paths["train_jsonl"]),
                                 (dev_rows, paths["dev"], paths["dev_jsonl"])):
        with open(official, "w") as handle:
            json.dump(to_official_squad(rows), handle)
        with open(flat, "w") as handle:
            handle.writelines(json.dumps(row) + "\n" for row in rows)
    return paths
