#!/usr/bin/env python
"""Which INT8 for a structured model: our QAT, or onnxruntime's post-training quantization (dynamic, or static QDQ
calibrated on task data)? For each trained FP32 row named, its export is quantized both ways (in a second
environment, .venv-ptq, built on first use from bench/ptq-requirements.txt: onnxruntime.quantization needs a newer
onnx than sparseml allows us), then every file (FP32, its QAT row `<row>_int8` where trained, dynamic, static)
is scored on the task's dev set in onnxruntime and in OpenVINO (f32 hint), checked for integer products that would
saturate on a CPU without VNNI, and timed side by side with the dense FP32 export in onnxruntime at batch-1 latency
and the task's throughput shape.

    python bench/ptq.py --data_dir ../shared/data --table sst2 --rows ft_struct3x_distill

Results: bench/results/int8_methods.json (one entry per table/row; others kept) and .md, and the README section
of that name.
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

from bench.deploy_check import (QA_SETTINGS, SST2_SETTINGS, environment_python, onnx_predictions,  # noqa: E402
                                squad_examples, sst2_examples)
from bench.report import replace_doc_section  # noqa: E402
from bench.run import SPEED_SHAPES, default_work_dir, environment  # noqa: E402
from sparsebert.jsonfile import write_json  # noqa: E402

ENGINES = ("onnxruntime", "openvino")
CALIBRATION_EXAMPLES = 256
TASKS = {"squad": ("qa", "run_qa.py"), "sst2": ("sst2", "run_glue.py")}
RESULTS = os.path.join(BENCH, "results", "int8_methods.json")


def calibration_inputs(task: str, folder: str, data_dir: str) -> dict:
    """The model inputs of the first CALIBRATION_EXAMPLES training examples (SQuAD: windows), padded to the
    benchmark's length: what static quantization measures its activation ranges on."""
    import numpy as np
    from transformers import AutoTokenizer

    from sparsebert.families import MODEL_INPUTS

    tokenizer = AutoTokenizer.from_pretrained(folder)
    if task == "qa":
        from datasets import Dataset

        from run_qa import DataTrainingArguments
        from utils_qa import tokenize_squad

        examples = squad_examples(data_dir, CALIBRATION_EXAMPLES, split="train-44-articles-v1.1.json")
        data_args = DataTrainingArguments(max_seq_length=QA_SETTINGS["sequence_length"],
                                          doc_stride=QA_SETTINGS["doc_stride"],
                                          max_query_length=QA_SETTINGS["max_question_length"], pad_to_max_length=True)
        features = tokenize_squad(Dataset.from_list(examples), tokenizer, data_args, train=False)[:CALIBRATION_EXAMPLES]
    else:
        sentences = [row["sentence"] for row in sst2_examples(data_dir, CALIBRATION_EXAMPLES, split="train.tsv")]
        features = tokenizer(sentences, padding="max_length", truncation=True,
                             max_length=SST2_SETTINGS["sequence_length"])
    return {name: np.array(features[name], dtype=np.int64) for name in MODEL_INPUTS if name in features}


def quantize(python, mode, source, target, calibration=None):
    # in the target's folder: the quantizer leaves its scratch files in the working directory
    subprocess.run([python, os.path.join(BENCH, "ptq_quantize.py"), mode, os.path.abspath(source),
                    os.path.abspath(target)] + ([os.path.abspath(calibration)] if calibration else []), check=True,
                   cwd=os.path.dirname(os.path.abspath(target)))


def score(task, path, engine, folder, examples, golds) -> float:
    """F1 (SQuAD, %) or accuracy (SST-2, %) of the file on the dev examples."""
    from sparsebert.metrics import squad_v1_metrics

    settings = QA_SETTINGS if task == "qa" else SST2_SETTINGS
    answers = onnx_predictions(path, engine, task, folder, examples, settings)
    if task == "qa":
        return squad_v1_metrics(answers, golds)["f1"]
    return 100 * sum(answers[k] == golds[k] for k in golds) / len(golds)


def dev_set(task, data_dir, folder, count):
    """Examples and their gold answers (SQuAD: the texts; SST-2: the label names of the folder's config)."""
    from transformers import AutoConfig

    if task == "qa":
        examples = squad_examples(data_dir, count)
        return examples, {e["id"]: e["answers"]["text"] for e in examples}
    examples = sst2_examples(data_dir, count)
    labels = AutoConfig.from_pretrained(folder).id2label
    return examples, {e["id"]: labels[int(e["label"])] for e in examples}


def speedups(files: dict, dense_path: str, folder: str, script: str, rounds: int) -> dict:
    """measure -> method -> engine -> speed-up over the dense FP32 file in onnxruntime, all timed in alternating
    rounds."""
    from transformers import AutoConfig, AutoTokenizer

    from bench.speed import batch, runners_for, time_rounds

    tokenizer = AutoTokenizer.from_pretrained(folder)
    positions = AutoConfig.from_pretrained(folder).max_position_embeddings
    result = {}
    with tempfile.TemporaryDirectory() as work:
        for size, length in SPEED_SHAPES[script]:
            inputs = batch(size, min(length, positions), tokenizer)
            runners = {("dense FP32", "onnxruntime"): runners_for(dense_path, inputs, False, work)["onnxruntime"]}
            runners.update({(method, engine): run for method, path in files.items()
                            for engine, run in runners_for(path, inputs, False, work, use_openvino=True).items()})
            medians = {key: statistics.median(seconds)
                       for key, seconds in time_rounds(runners, rounds, 20 if size == 1 else 3).items()}
            base = medians["dense FP32", "onnxruntime"]
            result[f"{size}x{length}"] = {method: {engine: base / medians[method, engine] for engine in ENGINES}
                                          for method in files}
    return result


def measure_row(args, python, table, row) -> dict:
    import numpy as np
    import onnx

    from sparsebert.integer_products import saturating_products

    task, script = TASKS[table]
    folder = os.path.join(args.work_dir, table, row)
    files = {"FP32": os.path.join(folder, "model.onnx")}
    qat = os.path.join(args.work_dir, table, f"{row}_int8", "model.onnx")
    if os.path.isfile(qat):
        files["QAT"] = qat
    with tempfile.TemporaryDirectory() as work:
        calibration = os.path.join(work, "calibration.npz")
        np.savez(calibration, **calibration_inputs(task, folder, args.data_dir))
        for method, mode in (("PTQ dynamic", "dynamic"), ("PTQ static QDQ", "static")):
            files[method] = os.path.join(work, f"{mode}.onnx")
            quantize(python, mode, files["FP32"], files[method], calibration)
        examples, golds = dev_set(task, args.data_dir, folder, args.examples)
        scores = {method: {engine: score(task, path, engine, folder, examples, golds) for engine in ENGINES}
                  for method, path in files.items()}
        saturating = {method: len(saturating_products(onnx.load(path))) for method, path in files.items()}
        megabytes = {method: os.path.getsize(path) / 1e6 for method, path in files.items()}
        speed = speedups(files, os.path.join(args.work_dir, table, "dense", "model.onnx"), folder, script,
                         args.rounds)
    return {"table": table, "row": row, "examples": len(golds), "metric": "F1" if task == "qa" else "accuracy",
            "scores": scores, "saturating_products_without_vnni": saturating, "megabytes": megabytes,
            "speedup": speed, "environment": environment()}


def markdown(results: dict) -> str:
    from bench.speed import where

    sections = []
    for entry in results.values():
        measures = list(entry["speedup"])
        header = ["INT8 method", f"{entry['metric']} onnxruntime", f"{entry['metric']} OpenVINO", "MB",
                  "saturating products without VNNI"]
        header += [f"{engine} {measure}" for measure in measures for engine in ("onnxruntime", "OpenVINO")]
        lines = [f"**{entry['table']} / {entry['row']}: INT8 by QAT or by onnxruntime's post-training quantization** "
                 f"({entry['examples']} dev examples; speed-ups over the dense FP32 export in onnxruntime; "
                 f"{where(entry['environment'])})", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
        for method in entry["scores"]:
            cells = [method] + [f"{entry['scores'][method][engine]:.2f}" for engine in ENGINES]
            cells += [f"{entry['megabytes'][method]:.1f}", str(entry["saturating_products_without_vnni"][method])]
            cells += [f"{entry['speedup'][measure][method][engine]:.2f}x" for measure in measures for engine in ENGINES]
            lines.append("| " + " | ".join(cells) + " |")
        lines += ["", recommendation(entry)]
        sections.append("\n".join(lines))
    return "\n\n".join(sections)


def sections(results_dir) -> dict:
    path = os.path.join(results_dir, os.path.basename(RESULTS))
    if not os.path.isfile(path):
        return {}
    with open(path) as handle:
        return {"int8_methods": markdown(json.load(handle))}


def recommendation(entry: dict) -> str:
    """Per runtime, the INT8 method with the best score and the fastest at batch 1, from the entry's figures."""
    int8 = [m for m in entry["scores"] if m != "FP32"]
    latency = next(iter(entry["speedup"]))
    parts = []
    for engine, name in (("onnxruntime", "onnxruntime"), ("openvino", "OpenVINO")):
        best = max(int8, key=lambda m: entry["scores"][m][engine])
        fastest = max(int8, key=lambda m: entry["speedup"][latency][m][engine])
        parts.append(f"in {name}, the most accurate INT8 is {best} "
                     f"({entry['scores'][best][engine] - entry['scores']['FP32'][engine]:+.2f} against FP32) and the "
                     f"fastest at {latency} is {fastest} ({entry['speedup'][latency][fastest][engine]:.2f}x)")
    return "Read off this table: " + "; ".join(parts) + "."


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="../shared/data")
    parser.add_argument("--table", required=True, choices=sorted(TASKS))
    parser.add_argument("--rows", nargs="+", required=True, help="trained FP32 rows of bench/run.py")
    parser.add_argument("--work_dir", default=default_work_dir())
    parser.add_argument("--ptq_env", default=os.path.join(REPO, ".venv-ptq"))
    parser.add_argument("--examples", type=int, help="dev examples to score (default: all)")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", default=RESULTS, help="default: %(default)s")
    parser.add_argument("--no_readme", action="store_true")
    args = parser.parse_args()
    for row in args.rows:
        if not os.path.isfile(os.path.join(args.work_dir, args.table, row, "model.onnx")):
            parser.error(f"--rows {row}: no {os.path.join(args.work_dir, args.table, row, 'model.onnx')} "
                         f"(train it with bench/run.py first)")
    python = environment_python(args.ptq_env, "ptq-requirements.txt")
    results = {}
    if os.path.isfile(args.results):
        with open(args.results) as handle:
            results = json.load(handle)
    for row in args.rows:
        results[f"{args.table}/{row}"] = measure_row(args, python, args.table, row)
        write_json(args.results, results)  # each row kept as it ends
    table = markdown(results)
    with open(os.path.splitext(args.results)[0] + ".md", "w") as handle:
        handle.write(table + "\n")
    if not args.no_readme:
        replace_doc_section(REPO, "int8_methods", table)
    print(table)


if __name__ == "__main__":
    main()
