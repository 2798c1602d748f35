"""SQuAD data: loading (official files, flattened JSON / JSON Lines, the Hub), tokenization into
features, and post-processing of start/end logits back into answer texts."""

import collections
import gzip
import json
import logging
import os

import numpy as np
from datasets import Dataset, DatasetDict, load_dataset

from sparsebert.errors import UsageError, load_or_refuse

logger = logging.getLogger(__name__)

SQUAD_COLUMNS = ("id", "title", "context", "question", "answers")


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_squad_datasets(data_args, cache_dir=None, need_train=True, need_eval=True, need_test=False) -> DatasetDict:
    """The splits the run needs, from local files when given, else from the Hub; the questions to predict
    (--test_file, answers not needed) always from a file."""
    wanted = {"train": (need_train, "`train_file`", data_args.train_file),
              "validation": (need_eval, "`validation_file`", data_args.validation_file)}
    test = {"test": load_squad_file(data_args.test_file, "`test_file`", labeled=False)} if need_test else {}
    if any(path for _, _, path in wanted.values()):
        splits = {}
        for split, (needed, setting, path) in wanted.items():
            if path:
                splits[split] = load_squad_file(path, setting)
            elif needed:
                raise UsageError(f"{setting} is required: the run needs a {split} split and other splits come "
                                 f"from files")
        return DatasetDict({**splits, **test})
    if not (need_train or need_eval):
        return DatasetDict(test)
    hub = load_or_refuse("`dataset_name`", data_args.dataset_name, lambda: load_dataset(
        data_args.dataset_name, data_args.dataset_config_name, cache_dir=cache_dir),
        hint="; without the Hub, give `train_file` and `validation_file`")
    return DatasetDict({**hub, **test})


def load_squad_file(path: str, setting: str = "data file", labeled: bool = True) -> Dataset:
    """A SQuAD split from (a) an official file (data -> paragraphs -> qas, v1.1 or v2.0), or (b) flattened
    rows with the Hugging Face `squad` columns, as a JSON list, {"data": [rows]}, or JSON Lines (.gz ok).
    Unlabeled rows (questions to predict) may leave out the answers."""
    if not os.path.isfile(path):
        raise UsageError(f"{setting} {path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8") as handle:
            text = handle.read()
    except (OSError, UnicodeDecodeError) as err:
        raise UsageError(f"{setting} {path}: cannot read it ({err})") from err
    try:
        document = json.loads(text)
    except json.JSONDecodeError as whole_err:
        document = _parse_json_lines(text, path, setting, whole_err)
    del text  # the parsed document shares its strings with the columns built below

    if isinstance(document, dict) and isinstance(document.get("data"), list):
        rows = document["data"]
        if rows and isinstance(rows[0], dict) and "paragraphs" in rows[0]:
            return Dataset.from_dict(_official_squad_columns(rows, path, setting))
    elif isinstance(document, dict):  # JSON Lines with a single row
        rows = [document]
    elif isinstance(document, list):
        rows = document
    else:
        raise UsageError(f"{setting} {path}: expected SQuAD JSON (data -> paragraphs -> qas) or rows with the columns "
                         f"{', '.join(SQUAD_COLUMNS)}")
    return Dataset.from_dict(_flat_squad_columns(rows, path, setting, labeled))


def _parse_json_lines(text, path, setting, whole_err):
    rows = []
    for number, line in enumerate(text.splitlines(), start=1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as err:
                culprit = whole_err if number == 1 else err
                where = f"line {culprit.lineno}" if number == 1 else f"line {number}"
                raise UsageError(f"{setting} {path}: not valid JSON or JSON Lines ({where}: {culprit.msg})") from err
    return rows


def _official_squad_columns(articles, path, setting) -> dict:
    columns = {name: [] for name in SQUAD_COLUMNS}
    try:
        for article in articles:
            title = article.get("title", "")
            for paragraph in article["paragraphs"]:
                context = paragraph["context"]
                for qa in paragraph["qas"]:
                    columns["id"].append(str(qa["id"]))
                    columns["title"].append(title)
                    columns["context"].append(context)  # the same str object for every question
                    columns["question"].append(qa["question"])
                    answers = qa.get("answers", [])
                    columns["answers"].append({"text": [a["text"] for a in answers],
                                               "answer_start": [int(a["answer_start"]) for a in answers]})
    except (KeyError, TypeError) as err:
        raise UsageError(f"{setting} {path}: malformed SQuAD article {article.get('title', '?')!r} "
                         f"(missing or wrong field {err})") from err
    return columns


def _flat_squad_columns(rows, path, setting, labeled=True) -> dict:
    if not rows:
        raise UsageError(f"{setting} {path}: holds no examples")
    required = ("id", "context", "question", "answers") if labeled else ("id", "context", "question")
    missing = [name for name in required if not isinstance(rows[0], dict) or name not in rows[0]]
    if missing:
        raise UsageError(f"{setting} {path}: missing the column(s) {', '.join(missing)} "
                         f"(need {', '.join(SQUAD_COLUMNS)})")
    columns = {name: [] for name in SQUAD_COLUMNS}
    for number, row in enumerate(rows, start=1):
        try:
            answers = row["answers"] if labeled or "answers" in row else {"text": [], "answer_start": []}
            if isinstance(answers, list):  # [{"text", "answer_start"}, ...]
                answers = {"text": [a["text"] for a in answers], "answer_start": [a["answer_start"] for a in answers]}
            answers = {"text": list(answers["text"]), "answer_start": [int(s) for s in answers["answer_start"]]}
            for name in ("id", "context", "question"):
                columns[name].append(str(row[name]))
        except (KeyError, TypeError, ValueError) as err:
            raise UsageError(f"{setting} {path}: row {number} is malformed (field {err})") from err
        columns["title"].append(row.get("title", ""))
        columns["answers"].append(answers)
    return columns


def drop_misaligned_answers(dataset: Dataset, setting: str = "`train_file`") -> Dataset:
    """Training needs answer_start to point at the answer text; rows where it does not are skipped.

    Skipping (rather than refusing the file) keeps a real data set with a few bad rows usable; the warning
    gives the count so a badly broken file is still noticed.
    """
    def aligned(example):
        answers = example["answers"]
        if not answers["text"]:
            return True  # unanswerable (v2): nothing to align
        start, text = answers["answer_start"][0], answers["text"][0]
        return example["context"][start:start + len(text)] == text

    kept = dataset.filter(aligned, desc="Checking answer_start")
    dropped = len(dataset) - len(kept)
    if dropped:
        first = next(ex["id"] for ex in dataset if not aligned(ex))
        logger.warning(f"{setting}: skipped {dropped} of {len(dataset)} training examples whose answer_start does not "
                       f"point at the answer text (first: id {first})")
    return kept


# --------------------------------------------------------------------------------------------------
# Features
# --------------------------------------------------------------------------------------------------


def _truncate_questions(questions, tokenizer, max_query_length):
    """Strip leading spaces (they break truncation) and keep at most max_query_length question tokens."""
    questions = [q.lstrip() for q in questions]
    encoded = tokenizer(questions, add_special_tokens=False, return_offsets_mapping=True)
    return [q if len(offsets) <= max_query_length else q[:offsets[max_query_length - 1][1]]
            for q, offsets in zip(questions, encoded["offset_mapping"])]


def check_doc_stride(examples, tokenizer, data_args, split: str):
    """Each window holds the question, the special tokens and a piece of context that overlaps the next by
    --doc_stride tokens, so the stride must stay below the room the longest question (as truncated) leaves."""
    if len(examples) == 0:
        return  # nothing to tokenize (an empty training set is refused after this)
    lengths = [len(ids) for ids in tokenizer([q.lstrip() for q in examples["question"]],
                                             add_special_tokens=False)["input_ids"]]
    longest = min(max(lengths, default=0), data_args.max_query_length)
    room = data_args.max_seq_length - longest - tokenizer.num_special_tokens_to_add(pair=True)
    if data_args.doc_stride >= room:
        raise UsageError(f"`doc_stride` {data_args.doc_stride} is too large for `max_seq_length` "
                         f"{data_args.max_seq_length}: the longest {split} question ({longest} tokens, after "
                         f"`max_query_length` {data_args.max_query_length}) leaves {room} context tokens per window; "
                         f"the stride must be smaller than that")


def _context_comes_second(tokenizer) -> bool:
    """The question leads and the context follows, except for tokenizers that pad on the left (as HF's
    example does): there the context leads, so that padding never sits between the two."""
    return tokenizer.padding_side == "right"


def _tokenize(examples, tokenizer, data_args):
    questions = _truncate_questions(examples["question"], tokenizer, data_args.max_query_length)
    second = _context_comes_second(tokenizer)
    return tokenizer(
        questions if second else examples["context"],
        examples["context"] if second else questions,
        truncation="only_second" if second else "only_first",
        max_length=data_args.max_seq_length,
        stride=data_args.doc_stride,
        return_overflowing_tokens=True,
        return_offsets_mapping=True,
        padding="max_length" if data_args.pad_to_max_length else False,
    )


def prepare_train_features(examples, tokenizer, data_args):
    """Windows over long contexts, each labelled with the answer's token span, or CLS if outside it."""
    tokenized = _tokenize(examples, tokenizer, data_args)
    example_of_feature = tokenized.pop("overflow_to_sample_mapping")
    offsets_per_feature = tokenized.pop("offset_mapping")
    tokenized["start_positions"], tokenized["end_positions"] = [], []
    for i, offsets in enumerate(offsets_per_feature):
        cls_index = tokenized["input_ids"][i].index(tokenizer.cls_token_id)  # not always position 0
        sequence_ids = tokenized.sequence_ids(i)
        context = 1 if _context_comes_second(tokenizer) else 0
        answers = examples["answers"][example_of_feature[i]]
        start, end = cls_index, cls_index
        if answers["answer_start"]:
            start_char = answers["answer_start"][0]
            end_char = start_char + len(answers["text"][0])
            context_tokens = [t for t, s in enumerate(sequence_ids) if s == context]
            first, last = context_tokens[0], context_tokens[-1]
            if offsets[first][0] <= start_char and offsets[last][1] >= end_char:
                start = first
                while start <= last and offsets[start][0] <= start_char:
                    start += 1
                start -= 1
                end = last
                while end >= first and offsets[end][1] >= end_char:
                    end -= 1
                end += 1
        tokenized["start_positions"].append(start)
        tokenized["end_positions"].append(end)
    return tokenized


def prepare_validation_features(examples, tokenizer, data_args):
    """Windows over long contexts that remember their example and which tokens belong to the context."""
    tokenized = _tokenize(examples, tokenizer, data_args)
    example_of_feature = tokenized.pop("overflow_to_sample_mapping")
    tokenized["example_id"] = []
    context = 1 if _context_comes_second(tokenizer) else 0
    tokenized["cls_index"] = []  # where the no-answer score is read (not 0 behind left padding)
    for i in range(len(tokenized["input_ids"])):
        sequence_ids = tokenized.sequence_ids(i)
        tokenized["example_id"].append(examples["id"][example_of_feature[i]])
        tokenized["cls_index"].append(tokenized["input_ids"][i].index(tokenizer.cls_token_id))
        tokenized["offset_mapping"][i] = [
            offset if sequence_ids[k] == context else None for k, offset in enumerate(tokenized["offset_mapping"][i])
        ]
    return tokenized


def tokenize_squad(dataset: Dataset, tokenizer, data_args, train: bool) -> Dataset:
    prepare = prepare_train_features if train else prepare_validation_features
    return dataset.map(
        prepare,
        batched=True,
        num_proc=data_args.preprocessing_num_workers,
        remove_columns=dataset.column_names,
        load_from_cache_file=not data_args.overwrite_cache,
        fn_kwargs={"tokenizer": tokenizer, "data_args": data_args},
        desc=f"Tokenizing {'train' if train else 'validation'}",
    )


# --------------------------------------------------------------------------------------------------
# Post-processing
# --------------------------------------------------------------------------------------------------


def postprocess_qa_predictions(
    examples,
    features,
    predictions,
    version_2_with_negative: bool = False,
    n_best_size: int = 20,
    max_answer_length: int = 30,
    null_score_diff_threshold: float = 0.0,
):
    """Turn per-feature start/end logits into one answer text per example.

    Returns (answers, null_score_diffs): id -> text ("" for predicted no-answer under v2) and, for v2, id ->
    null score minus the best span score (the higher, the surer the question has no answer).
    """
    start_logits, end_logits = predictions[:2]
    if len(start_logits) != len(features):
        raise ValueError(f"got {len(start_logits)} predictions for {len(features)} features")
    features_of_example = collections.defaultdict(list)
    for index, example_id in enumerate(features["example_id"]):
        features_of_example[example_id].append(index)
    offset_mappings = features["offset_mapping"]
    cls_indices = features["cls_index"] if "cls_index" in features.column_names else [0] * len(features)

    answers, null_score_diffs = {}, {}
    for example in examples:
        best_null_score = None
        candidates = []
        for index in features_of_example[example["id"]]:
            starts, ends, offsets = start_logits[index], end_logits[index], offset_mappings[index]
            null_score = starts[cls_indices[index]] + ends[cls_indices[index]]
            if best_null_score is None or null_score < best_null_score:
                best_null_score = null_score
            top_starts = np.argsort(starts)[-1: -n_best_size - 1: -1]
            top_ends = np.argsort(ends)[-1: -n_best_size - 1: -1]
            for s in top_starts:
                for e in top_ends:
                    if (s >= len(offsets) or e >= len(offsets) or offsets[s] is None or offsets[e] is None
                            or e < s or e - s + 1 > max_answer_length):
                        continue
                    candidates.append((starts[s] + ends[e], offsets[s][0], offsets[e][1]))
        candidates.sort(key=lambda c: c[0], reverse=True)
        best = candidates[0] if candidates else (None, 0, 0)
        best_text = example["context"][best[1]:best[2]]
        if not version_2_with_negative:
            answers[example["id"]] = best_text
            continue
        best_span_score = best[0] if best[0] is not None else -np.inf
        score_diff = float(best_null_score - best_span_score)
        null_score_diffs[example["id"]] = score_diff
        answers[example["id"]] = "" if score_diff > null_score_diff_threshold else best_text
    return answers, null_score_diffs
