"""GLUE tasks: their columns, labels and metrics, and loading them from the Hub, from CSV / JSON / JSON Lines
files with the Hugging Face `glue` columns, or from a task folder of the original GLUE distribution (TSV)."""

import csv
import gzip
import json
import logging
import os
from dataclasses import dataclass

from datasets import Dataset, DatasetDict, load_dataset

from sparsebert.errors import UsageError, load_or_refuse
from sparsebert.metrics import glue_metrics

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class GlueTask:
    text_columns: tuple            # one or two input texts, in the HF `glue` column names
    label_names: tuple | None      # None for regression (STS-B)
    metric: str                    # key in sparsebert.metrics.GLUE_METRICS
    folder: str                    # folder name in the original distribution
    tsv_columns: dict              # HF column -> TSV header (or column number for header-less CoLA)
    eval_splits: tuple = ("validation",)

    @property
    def is_regression(self) -> bool:
        return self.label_names is None

    @property
    def num_labels(self) -> int:
        return 1 if self.is_regression else len(self.label_names)


TASKS = {
    "cola": GlueTask(("sentence",), ("unacceptable", "acceptable"), "matthews", "CoLA",
                     {"sentence": 3, "label": 1}),
    "sst2": GlueTask(("sentence",), ("negative", "positive"), "accuracy", "SST-2",
                     {"sentence": "sentence", "label": "label"}),
    "mrpc": GlueTask(("sentence1", "sentence2"), ("not_equivalent", "equivalent"), "f1_accuracy", "MRPC",
                     {"sentence1": "#1 String", "sentence2": "#2 String", "label": "Quality"}),
    "qqp": GlueTask(("question1", "question2"), ("not_duplicate", "duplicate"), "f1_accuracy", "QQP",
                    {"question1": "question1", "question2": "question2", "label": "is_duplicate"}),
    "stsb": GlueTask(("sentence1", "sentence2"), None, "correlation", "STS-B",
                     {"sentence1": "sentence1", "sentence2": "sentence2", "label": "score"}),
    "mnli": GlueTask(("premise", "hypothesis"), ("entailment", "neutral", "contradiction"), "accuracy", "MNLI",
                     {"premise": "sentence1", "hypothesis": "sentence2", "label": "gold_label"},
                     eval_splits=("validation_matched", "validation_mismatched")),
    "qnli": GlueTask(("question", "sentence"), ("entailment", "not_entailment"), "accuracy", "QNLI",
                     {"question": "question", "sentence": "sentence", "label": "label"}),
    "rte": GlueTask(("sentence1", "sentence2"), ("entailment", "not_entailment"), "accuracy", "RTE",
                    {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
    "wnli": GlueTask(("sentence1", "sentence2"), ("not_entailment", "entailment"), "accuracy", "WNLI",
                     {"sentence1": "sentence1", "sentence2": "sentence2", "label": "label"}),
}

# original file names per split; MNLI has two dev sets
_TSV_FILES = {"train": "train.tsv", "validation": "dev.tsv", "validation_matched": "dev_matched.tsv",
              "validation_mismatched": "dev_mismatched.tsv"}


def get_task(name: str) -> tuple[str, GlueTask]:
    key = (name or "").lower().replace("-", "")
    if key not in TASKS:
        raise UsageError(f"`task_name` {name}: unknown GLUE task; choose one of {', '.join(TASKS)}")
    return key, TASKS[key]


def compute_task_metrics(task: GlueTask, predictions, labels) -> dict:
    return glue_metrics(task.metric, predictions, labels)


# --------------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------------


def load_glue_datasets(task_name: str, task: GlueTask, data_args, cache_dir=None, need_train=True,
                       need_eval=True) -> DatasetDict:
    """The splits the run needs: train, and the task's evaluation split(s)."""
    wanted = (["train"] if need_train else []) + (list(task.eval_splits) if need_eval else [])
    second = task.eval_splits[1] if len(task.eval_splits) > 1 else None  # MNLI's mismatched dev set
    if data_args.glue_data_dir:
        paths = {split: os.path.join(data_args.glue_data_dir, _TSV_FILES[split]) for split in wanted}
        if second in paths and not os.path.isfile(paths[second]):
            logger.warning(f"{task_name}: no {paths[second]}: evaluating on the matched dev set alone")
            del paths[second]
        return DatasetDict({split: _read_tsv(task, path) for split, path in paths.items()})
    files = {"train": ("`train_file`", data_args.train_file),
             task.eval_splits[0]: ("`validation_file`", data_args.validation_file)}
    if second:
        files[second] = ("`validation_mismatched_file`", data_args.validation_mismatched_file)
    if any(path for _, path in files.values()):
        if second in wanted and not files[second][1] and files[task.eval_splits[0]][1]:
            logger.warning(f"{task_name}: no `validation_mismatched_file`: evaluating on the matched dev set alone")
            wanted.remove(second)
        for split in wanted:
            setting, path = files[split]
            if not path:
                raise UsageError(f"{setting} is required for task {task_name} when loading from files")
        return DatasetDict({split: _read_rows_file(task, files[split][1], files[split][0]) for split in wanted})
    hub = load_or_refuse("`dataset_name`", f"{data_args.dataset_name}/{task_name}", lambda: load_dataset(
        data_args.dataset_name, task_name, cache_dir=cache_dir),
        hint="; without the Hub, give `train_file` and `validation_file` (or `glue_data_dir`)")
    return DatasetDict({split: _checked(task, hub[split], f"{data_args.dataset_name}/{task_name} {split}")
                        for split in wanted})


def _read_tsv(task: GlueTask, path: str) -> Dataset:
    """A split of the original distribution: tab-separated, no quoting (the texts contain stray quotes),
    a UTF-8 byte-order mark on some files (MRPC), no header on CoLA."""
    setting = f"`glue_data_dir` file {path}"
    if not os.path.isfile(path):
        raise UsageError(f"{setting}: no such file")
    with open(path, encoding="utf-8-sig", newline="") as handle:
        lines = list(csv.reader(handle, delimiter="\t", quoting=csv.QUOTE_NONE))
    positional = all(isinstance(c, int) for c in task.tsv_columns.values())
    header = None if positional else lines.pop(0) if lines else []
    if header is not None:
        missing = [name for name in task.tsv_columns.values() if name not in header]
        if missing:
            raise UsageError(f"{setting}: missing the column(s) {', '.join(missing)} of task {task.folder} "
                             f"(its header: {', '.join(header)})")
        index = {hf: header.index(name) for hf, name in task.tsv_columns.items()}
    else:
        index = dict(task.tsv_columns)
    rows = {hf: [] for hf in index}
    for line in lines:
        if not line:
            continue
        for hf, i in index.items():
            rows[hf].append(line[i] if i < len(line) else "")
    return _checked(task, Dataset.from_dict(rows), setting)


def load_glue_test_file(task: GlueTask, path: str, setting: str = "`test_file`") -> Dataset:
    """Rows to predict, labels unknown: the task's text columns (a label column, if there is one, is ignored)."""
    rows = _parse_rows_file(path, setting)
    missing = [c for c in task.text_columns if c not in rows[0]]
    if missing:
        raise UsageError(f"{setting} {path}: missing the column(s) {', '.join(missing)} that task needs "
                         f"({', '.join(task.text_columns)})")
    return Dataset.from_dict({c: ["" if row.get(c) is None else str(row.get(c)) for row in rows]
                              for c in task.text_columns})


def label_text(task: GlueTask, value) -> str:
    """A prediction as the original GLUE files write it: the label's name, or the score to 3 decimals."""
    return f"{float(value):.3f}" if task.is_regression else task.label_names[int(value)]


def _read_rows_file(task: GlueTask, path: str, setting: str) -> Dataset:
    rows = _parse_rows_file(path, setting)
    needed = list(task.text_columns) + ["label"]
    missing = [c for c in needed if c not in rows[0]]
    if missing:
        raise UsageError(f"{setting} {path}: missing the column(s) {', '.join(missing)} that task needs "
                         f"({', '.join(needed)})")
    columns = {c: [row.get(c) for row in rows] for c in needed}
    return _checked(task, Dataset.from_dict(columns), f"{setting} {path}")


def _parse_rows_file(path: str, setting: str) -> list:
    """CSV (with a header), JSON (a list of rows, or {"data": rows}) or JSON Lines, optionally gzipped."""
    if not os.path.isfile(path):
        raise UsageError(f"{setting} {path}: no such file")
    opener = gzip.open if path.endswith(".gz") else open
    name = path[:-3] if path.endswith(".gz") else path
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            if name.endswith((".csv", ".tsv")):
                rows = list(csv.DictReader(handle, delimiter="\t" if name.endswith(".tsv") else ","))
            else:
                text = handle.read()
                try:
                    rows = json.loads(text)
                    rows = rows["data"] if isinstance(rows, dict) and "data" in rows else rows
                    rows = [rows] if isinstance(rows, dict) else rows
                except json.JSONDecodeError:
                    rows = [json.loads(line) for line in text.splitlines() if line.strip()]
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, csv.Error) as err:
        raise UsageError(f"{setting} {path}: cannot parse it ({err})") from err
    if not rows:
        raise UsageError(f"{setting} {path}: holds no examples")
    return rows


def _checked(task: GlueTask, dataset: Dataset, source: str) -> Dataset:
    """Labels as the model needs them (class ids, or floats for STS-B); anything outside the task's label set
    is refused with the first offending row."""
    labels = []
    for row_number, value in enumerate(dataset["label"], start=1):
        label = _label_value(task, value)
        if label is None:
            valid = "a number" if task.is_regression else ", ".join(
                f"{i} or {name}" for i, name in enumerate(task.label_names))
            raise UsageError(f"{source}: row {row_number} has label {value!r}, outside the task's labels ({valid})")
        labels.append(label)
    texts = {c: ["" if t is None else str(t) for t in dataset[c]] for c in task.text_columns}
    return Dataset.from_dict({**texts, "label": labels})


def _label_value(task: GlueTask, value):
    text = str(value).strip()
    if task.is_regression:
        try:
            return float(text)
        except ValueError:
            return None
    if text in task.label_names:
        return task.label_names.index(text)
    try:
        number = float(text)
    except ValueError:
        return None
    return int(number) if number.is_integer() and 0 <= number < task.num_labels else None
