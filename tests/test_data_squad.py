"""Both SQuAD file formats load to the same examples; broken files are refused with the file named."""

import gzip
import json

import pytest

from sparsebert.errors import UsageError
from utils_qa import drop_misaligned_answers, load_squad_file


def _rows(dataset):
    return sorted(dataset.to_list(), key=lambda r: r["id"])


def test_official_and_flat_formats_give_the_same_examples(squad_files, tmp_path):
    official = load_squad_file(squad_files["train"])
    flat = load_squad_file(squad_files["train_jsonl"])
    assert len(official) == 120
    assert _rows(official) == _rows(flat)
    # the Hugging Face run_qa layout {"data": [rows]} and a gzipped JSON Lines file too
    rows = [json.loads(line) for line in open(squad_files["train_jsonl"])]
    (tmp_path / "wrapped.json").write_text(json.dumps({"data": rows}))
    with gzip.open(tmp_path / "rows.jsonl.gz", "wt") as handle:
        handle.writelines(json.dumps(r) + "\n" for r in rows)
    assert _rows(load_squad_file(str(tmp_path / "wrapped.json"))) == _rows(official)
    assert _rows(load_squad_file(str(tmp_path / "rows.jsonl.gz"))) == _rows(official)


def test_v2_unanswerable_questions_have_empty_answers(tmp_path):
    squad_v2 = {"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": "The sky is blue.", "qas": [
        {"id": "1", "question": "What color is the sky?", "answers": [{"text": "blue", "answer_start": 11}],
         "is_impossible": False},
        {"id": "2", "question": "What color is the sea?", "answers": [], "is_impossible": True,
         "plausible_answers": [{"text": "blue", "answer_start": 11}]}]}]}]}
    path = tmp_path / "v2.json"
    path.write_text(json.dumps(squad_v2))
    rows = _rows(load_squad_file(str(path)))
    assert rows[0]["answers"] == {"text": ["blue"], "answer_start": [11]}
    assert rows[1]["answers"] == {"text": [], "answer_start": []}


@pytest.mark.parametrize("content, message", [
    ('{"data": [{"title": "x", "paragraphs": [{"context": "c"', "not valid JSON"),
    ('{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}', "malformed SQuAD article"),
    ('{"id": "1", "question": "q", "answers": {"text": [], "answer_start": []}}\n', "missing the column(s) context"),
    ("[]", "holds no examples"),
])
def test_malformed_files_are_refused_naming_the_file(tmp_path, content, message):
    path = tmp_path / "broken.json"
    path.write_text(content)
    with pytest.raises(UsageError, match="`train_file` .*broken.json") as err:
        load_squad_file(str(path), "`train_file`")
    assert message in str(err.value)


def test_missing_file_is_named():
    with pytest.raises(UsageError, match="`validation_file` nowhere.json: no such file"):
        load_squad_file("nowhere.json", "`validation_file`")


def test_misaligned_answer_start_is_skipped_and_counted(squad_files, caplog):
    dataset = load_squad_file(squad_files["train"])
    shifted = dataset.map(lambda ex, i: {"answers": {"text": ex["answers"]["text"],
                                                     "answer_start": [ex["answers"]["answer_start"][0] + (i < 3)]}},
                          with_indices=True)
    kept = drop_misaligned_answers(shifted)
    assert len(kept) == len(dataset) - 3
    assert "skipped 3 of 120" in caplog.text
