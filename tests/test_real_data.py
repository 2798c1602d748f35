"""The real files of ../shared/data, when present beside the checkout, load to their published counts and
both of their forms agree. Skipped elsewhere: the tests never depend on data outside the repo."""

import os

import pytest

from conftest import REPO
from sparsebert.glue import _read_rows_file, get_task, load_glue_datasets
from utils_qa import load_squad_file

DATA = os.path.join(os.path.dirname(REPO), "shared", "data")
pytestmark = pytest.mark.skipif(not os.path.isdir(DATA), reason="../shared/data is not beside this checkout")


def test_official_squad_files_and_their_flattened_copy():
    dev = load_squad_file(os.path.join(DATA, "squad", "dev-v1.1.json"))
    train = load_squad_file(os.path.join(DATA, "squad", "train-44-articles-v1.1.json"))
    flat = load_squad_file(os.path.join(DATA, "squad", "validation.jsonl.gz"))
    assert (len(dev), len(train), len(flat)) == (10570, 11877, 10570)
    assert sorted(dev.to_list(), key=lambda r: r["id"]) == sorted(flat.to_list(), key=lambda r: r["id"])


@pytest.mark.parametrize("task, folder, train_rows, dev_rows", [
    ("cola", "CoLA", 8551, 1043), ("sst2", "SST-2", 67349, 872), ("mrpc", "MRPC", 3667, 408),
    ("rte", "RTE", 2490, 277), ("stsb", "STS-B", 5749, 1500), ("wnli", "WNLI", 635, 71)])
def test_original_glue_folders_match_their_json_lines(task, folder, train_rows, dev_rows):
    key, spec = get_task(task)

    class Args:
        dataset_name, glue_data_dir = "glue", os.path.join(DATA, "glue", folder)
        train_file = validation_file = validation_mismatched_file = None

    data = load_glue_datasets(key, spec, Args())
    assert (len(data["train"]), len(data["validation"])) == (train_rows, dev_rows)
    jsonl = _read_rows_file(spec, os.path.join(DATA, "glue-jsonl", task, "validation.jsonl.gz"), "--validation_file")
    assert data["validation"].to_list() == jsonl.to_list()
