#!/usr/bin/env python
"""Do our export folders run where users deploy them? Build the deployment environment (DeepSparse 1.8 and its
transformers pipelines, from bench/deploy-requirements.txt: they cannot share our environment), point DeepSparse's
own Pipeline at each folder, and compare its answers on real dev examples with our PyTorch model's. With
--engine openvino, the folder's model.onnx runs in OpenVINO (the maintained, Apache-2.0 runtime; f32) under our
own windowing and post-processing, as a user serving the file would (no second environment needed).

    python bench/deploy_check.py --data_dir ../shared/data --qa squad/dense --sst2 sst2/dense sst2/dense_int8
    python bench/deploy_check.py --engine openvino --data_dir ../shared/data --qa squad/ft_struct3x_distill

A folder is a path, or a row of the benchmark's work folder (bench/run.py --work_dir: `sst2/dense`). Each folder
needs what training with --do_onnx_export leaves there: the model (for the PyTorch side), model.onnx,
config and tokenizer. It passes when at least 99% of the answers agree (QA: the same answer text; SST-2: the same
label). The pipeline's sequence length is cut to the model's position embeddings where they are fewer. An INT8 model may be more sensitive than that to float rounding alone: its PyTorch answers are then also
taken with every quantizer's input nudged by one float32 rounding step (sparsebert.quantization.nudge_rounding),
and the engine may change at most 1 point more of the answers than that nudge does. Results: for the
benchmark's rows, bench/results/deploy_check.json and .md, one row per folder, FP32 or INT8 as its export says (a
folder checked again replaces its row, the others' rows stay); for a folder of one's own, deploy_check.json in it.
"""

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

from bench.run import default_work_dir, environment  # noqa: E402
from sparsebert.families import MODEL_INPUTS  # noqa: E402
from sparsebert.jsonfile import write_json  # noqa: E402
from sparsebert.metrics import squad_v1_metrics  # noqa: E402

AGREEMENT = 0.99
QA_SETTINGS = {"sequence_length": 256, "doc_stride": 128, "max_question_length": 64, "max_answer_length": 30,
               "n_best_size": 20}
SST2_SETTINGS = {"sequence_length": 64}
ENGINES = {"deepsparse": "DeepSparse (end-of-life, evaluation licence)", "openvino": "OpenVINO"}
EXAMPLES = {"qa": 1000, "sst2": None}  # default examples per folder (None: the whole dev set, SST-2's 872)


def environment_python(env_dir: str, requirements: str = "deploy-requirements.txt") -> str:
    """The python of a second environment for what cannot share ours (DeepSparse's pipelines, onnxruntime's
    quantization tools), built on first use from bench/<requirements>."""
    python = os.path.join(env_dir, "bin", "python")
    if not os.path.isfile(python):
        print(f"[bench] building {env_dir} from bench/{requirements}", flush=True)
        subprocess.run([sys.executable, "-m", "venv", env_dir], check=True)
        subprocess.run([python, "-m", "pip", "install", "-q", "-r", os.path.join(BENCH, requirements)], check=True)
    return python


def squad_examples(data_dir: str, count: int, split: str = "dev-v1.1.json") -> list[dict]:
    with open(os.path.join(data_dir, "squad", split)) as handle:
        articles = json.load(handle)["data"]
    examples = [{"id": qa["id"], "title": article["title"], "context": paragraph["context"], "question": qa["question"],
                 "answers": {"text": [a["text"] for a in qa["answers"]],
                             "answer_start": [a["answer_start"] for a in qa["answers"]]}}
                for article in articles for paragraph in article["paragraphs"] for qa in paragraph["qas"]]
    return examples[:count] if count else examples


def sst2_examples(data_dir: str, count: int, split: str = "dev.tsv") -> list[dict]:
    with open(os.path.join(data_dir, "glue", "SST-2", split)) as handle:
        rows = [line.rstrip("\n").split("\t") for line in handle][1:]
    return [{"id": str(i), "sentence": sentence, "label": label}
            for i, (sentence, label) in enumerate(rows[:count] if count else rows)]


def deepsparse_predictions(python, task, folder, examples, settings, work) -> dict:
    """DeepSparse's answers, from a copy of the folder: its pipeline rewrites model.onnx in place with fixed input
    shapes (batch 1 x sequence_length), which would leave our export unusable at any other shape."""
    copy = os.path.join(work, "export")
    shutil.copytree(folder, copy, ignore=shutil.ignore_patterns("checkpoint-*", "*.safetensors", "*.bin"))
    folder = copy
    examples_path, predictions_path = os.path.join(work, "examples.json"), os.path.join(work, "deepsparse.json")
    with open(examples_path, "w") as handle:
        json.dump(examples, handle)
    subprocess.run([python, os.path.join(BENCH, "deploy_pipeline.py"), task, folder, examples_path, predictions_path,
                    json.dumps(settings)], check=True)
    with open(predictions_path) as handle:
        return json.load(handle)


def onnx_runner(path: str, engine: str = "openvino"):
    """A callable from the tokenizer's inputs (numpy) to the outputs by name: the ONNX file at path in OpenVINO,
    compiled for the CPU in f32 (on CPUs with bf16 units it would otherwise compute in bf16), or in onnxruntime."""
    if engine == "onnxruntime":
        import onnxruntime

        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        accepted, names = {item.name for item in session.get_inputs()}, [item.name for item in session.get_outputs()]

        def run(inputs: dict) -> dict:
            return dict(zip(names, session.run(None, {k: v for k, v in inputs.items() if k in accepted})))

        return run
    import openvino

    compiled = openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    accepted = {port.get_any_name() for port in compiled.inputs}

    def run(inputs: dict) -> dict:
        results = compiled({name: value for name, value in inputs.items() if name in accepted})
        return {port.get_any_name(): results[port] for port in compiled.outputs}

    return run


def qa_predictions(run, tokenizer, examples, settings) -> dict:
    """The answers a user serving an export would give: our windowing of the contexts (utils_qa), the file run
    by `run` (onnx_runner), our post-processing of its logits."""
    import numpy as np
    from datasets import Dataset

    from run_qa import DataTrainingArguments
    from utils_qa import postprocess_qa_predictions, tokenize_squad

    data_args = DataTrainingArguments(max_seq_length=settings["sequence_length"], doc_stride=settings["doc_stride"],
                                      max_query_length=settings["max_question_length"], pad_to_max_length=True)
    examples = Dataset.from_list(examples)
    features = tokenize_squad(examples, tokenizer, data_args, train=False)
    names = [name for name in MODEL_INPUTS if name in features.column_names]
    start, end = [], []
    for first in range(0, len(features), 32):
        batch = features[first:first + 32]
        outputs = run({name: np.array(batch[name], dtype=np.int64) for name in names})
        start.append(outputs["start_logits"])
        end.append(outputs["end_logits"])
    answers, _ = postprocess_qa_predictions(examples, features, (np.concatenate(start), np.concatenate(end)),
                                            n_best_size=settings["n_best_size"],
                                            max_answer_length=settings["max_answer_length"])
    return answers


def sst2_predictions(run, tokenizer, config, examples) -> dict:
    predictions = {}
    for example in examples:
        logits = run(dict(tokenizer(example["sentence"], return_tensors="np", truncation=True,
                                    max_length=SST2_SETTINGS["sequence_length"])))["logits"]
        predictions[example["id"]] = config.id2label[int(logits.argmax(-1)[0])]
    return predictions


def onnx_predictions(path, engine, task, folder, examples, settings) -> dict:
    """The answers of the ONNX file at path (folder's model.onnx, or another file of the same model) in engine,
    with the folder's tokenizer and labels."""
    from transformers import AutoConfig, AutoTokenizer

    run, tokenizer = onnx_runner(path, engine), AutoTokenizer.from_pretrained(folder)
    if task == "qa":
        return qa_predictions(run, tokenizer, examples, settings)
    return sst2_predictions(run, tokenizer, AutoConfig.from_pretrained(folder), examples)


def torch_runner(model):
    """A callable like onnx_runner's for a PyTorch model: numpy inputs in, the outputs by name as numpy."""
    import inspect

    import torch

    accepted = inspect.signature(model.forward).parameters  # a DistilBERT model takes no token_type_ids

    def run(inputs: dict) -> dict:
        with torch.no_grad():
            outputs = model(**{name: torch.from_numpy(values) for name, values in inputs.items() if name in accepted})
        return {name: value.numpy() for name, value in outputs.items() if torch.is_tensor(value)}

    return run


def pytorch_predictions(task, folder, examples, settings, nudged=False) -> dict:
    """Our own answers from the folder's model, loaded as our scripts load it, under the same pre- and
    post-processing as the engines'; nudged: with every quantizer's input nudged by one float32 rounding step."""
    from transformers import AutoConfig, AutoModelForQuestionAnswering, AutoModelForSequenceClassification, \
        AutoTokenizer

    from sparsebert.arguments import ModelArguments
    from sparsebert.pipeline import load_model
    from sparsebert.quantization import nudge_rounding

    config, tokenizer = AutoConfig.from_pretrained(folder), AutoTokenizer.from_pretrained(folder)
    auto_class = AutoModelForQuestionAnswering if task == "qa" else AutoModelForSequenceClassification
    model = load_model(ModelArguments(model_name_or_path=folder), auto_class, config).eval()
    if nudged:
        nudge_rounding(model)
    if task == "qa":
        return qa_predictions(torch_runner(model), tokenizer, examples, settings)
    return sst2_predictions(torch_runner(model), tokenizer, config, examples)


def same_answer(answer, reference) -> bool:
    return str(answer).strip() == str(reference).strip()


def same_share(answers: dict, reference: dict) -> float:
    return sum(same_answer(answers[k], reference[k]) for k in reference) / len(reference)


def fitted_settings(task: str, folder: str) -> dict:
    """The pipeline settings, the sequence length cut to the model's position embeddings (a small model has 128)
    and the QA window overlap to half of it where it would not fit."""
    settings = dict(QA_SETTINGS) if task == "qa" else dict(SST2_SETTINGS)
    with open(os.path.join(folder, "config.json")) as handle:
        positions = json.load(handle).get("max_position_embeddings")
    if positions and settings["sequence_length"] > positions:
        print(f"[deploy] {folder}: sequence length {positions}, the model's position embeddings (not "
              f"{settings['sequence_length']})", flush=True)
        settings["sequence_length"] = positions
    if task == "qa" and settings["doc_stride"] >= settings["sequence_length"] - settings["max_question_length"]:
        settings["doc_stride"] = settings["sequence_length"] // 4
    return settings


def engine_predictions(engine, python, task, folder, examples, settings, work) -> dict:
    """The engine's answers: DeepSparse's own pipeline (in its environment), or OpenVINO under our pre- and
    post-processing."""
    if engine == "openvino":
        return onnx_predictions(os.path.join(folder, "model.onnx"), engine, task, folder, examples, settings)
    pipeline_task = "question-answering" if task == "qa" else "text-classification"
    return deepsparse_predictions(python, pipeline_task, folder, examples, settings, work)


def check_folder(python, task, folder, label, examples, engine="deepsparse") -> dict:
    settings = fitted_settings(task, folder)
    with open(os.path.join(folder, "onnx_parity.json")) as handle:
        precision = json.load(handle).get("precision", "fp32")
    nudged = None
    with tempfile.TemporaryDirectory() as work:
        theirs = engine_predictions(engine, python, task, folder, examples, settings, work)
        ours = pytorch_predictions(task, folder, examples, settings)
        if precision == "int8":
            nudged = pytorch_predictions(task, folder, examples, settings, nudged=True)
    agreement = same_share(theirs, ours)
    floor = same_share(nudged, ours) if nudged is not None else 1.0
    needed = floor - (1 - AGREEMENT)
    row = {"folder": label, "engine": engine, "task": task, "precision": precision, "examples": len(ours),
           "pipeline_settings": settings, "environment": environment(), "agreement": agreement,
           "own_rounding_floor": floor if nudged is not None else None, "needed": needed,
           "passes": agreement >= needed}
    if task == "qa":
        golds = {example["id"]: example["answers"]["text"] for example in examples}
        scored = {engine: theirs, "pytorch": ours, "pytorch_nudged": nudged}
        row["f1"] = {name: squad_v1_metrics(answers, golds)["f1"] for name, answers in scored.items() if answers}
    row["disagreements"] = {k: {engine: theirs[k], "pytorch": ours[k]}
                            for k in ours if not same_answer(theirs[k], ours[k])}
    return row


def resolve_folder(folder: str, work_dir: str) -> tuple[str, str | None]:
    """(the folder's path, its row name in the benchmark's results, or None for a folder of one's own): a benchmark
    row by its name in the work folder, or a path."""
    in_work = os.path.join(work_dir, folder)
    if not os.path.isdir(folder) and os.path.isdir(in_work):
        return os.path.abspath(in_work), folder
    path = os.path.abspath(folder)
    if not os.path.isdir(path):
        raise SystemExit(f"deploy_check.py: {folder} is neither a folder nor a row of {work_dir}")
    inside = os.path.commonpath([path, os.path.abspath(work_dir)]) == os.path.abspath(work_dir)
    return path, os.path.relpath(path, work_dir) if inside else None


def previous_rows(path: str) -> list[dict]:
    if not os.path.isfile(path):
        return []
    with open(path) as handle:
        return json.load(handle).get("folders", [])


def markdown(results) -> str:
    lines = ["| folder | engine | task | precision | examples | same answer | PyTorch vs itself, nudged | needed | "
             "passes | F1 engine / PyTorch | checked |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in results["folders"]:
        floor = row.get("own_rounding_floor")
        engine = row.get("engine", "deepsparse")  # (rows checked before OpenVINO was: DeepSparse)
        f1 = row.get("f1", {})
        f1 = f"{f1[engine]:.2f} / {f1['pytorch']:.2f}" if f1 else "-"
        lines.append(f"| `{row['folder']}` | {ENGINES[engine]} | {row['task']} | {row['precision']} | "
                     f"{row['examples']} | "
                     f"{100 * row['agreement']:.1f}% | {'-' if floor is None else f'{100 * floor:.1f}%'} | "
                     f"{100 * row.get('needed', AGREEMENT):.1f}% | {'yes' if row['passes'] else '**no**'} | {f1} | "
                     f"{row['environment']['date']} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", required=True, help="../shared/data")
    parser.add_argument("--qa", nargs="*", default=[], help="export folders of question-answering models")
    parser.add_argument("--sst2", nargs="*", default=[], help="export folders of SST-2 models")
    parser.add_argument("--examples", type=int, help="dev examples per folder (default: 1,000 SQuAD questions, every "
                        "SST-2 sentence; 0: the whole dev set)")
    parser.add_argument("--max_seq_length", type=int, default=QA_SETTINGS["sequence_length"], help="QA windows")
    parser.add_argument("--doc_stride", type=int, default=QA_SETTINGS["doc_stride"], help="QA window overlap")
    parser.add_argument("--work_dir", default=default_work_dir(), help="the benchmark's work folder (bench/run.py)")
    parser.add_argument("--engine", choices=list(ENGINES), default="deepsparse",
                        help="deepsparse: its own pipelines, in --deploy_env; openvino: the export in OpenVINO, under "
                             "our pre- and post-processing (it installs with our requirements)")
    parser.add_argument("--deploy_env", default=os.path.join(REPO, ".venv-deploy"))
    parser.add_argument("--results", default=os.path.join(BENCH, "results", "deploy_check"),
                        help="where the benchmark rows' results go (a folder of one's own gets deploy_check.json in it)")
    args = parser.parse_args()

    QA_SETTINGS.update(sequence_length=args.max_seq_length, doc_stride=args.doc_stride)
    python = environment_python(args.deploy_env) if args.engine == "deepsparse" else None
    benchmark_rows, passed = [], True
    for task, folders, examples in (("qa", args.qa, squad_examples), ("sst2", args.sst2, sst2_examples)):
        for folder in folders:
            count = EXAMPLES[task] if args.examples is None else args.examples
            path, row_name = resolve_folder(folder, args.work_dir)
            row = check_folder(python, task, path, row_name or folder, examples(args.data_dir, count), args.engine)
            passed = passed and row["passes"]
            print(f"[deploy] {folder}: {100 * row['agreement']:.1f}% the same answer ({100 * row['needed']:.1f}% "
                  f"needed): {'passes' if row['passes'] else 'FAILS'}", flush=True)
            if row_name is None:  # one's own folder: its result beside its model, not in the benchmark's table
                write_json(os.path.join(path, "deploy_check.json"), row)
                print(f"[deploy] written to {os.path.join(path, 'deploy_check.json')}", flush=True)
            else:
                benchmark_rows.append(row)
    if benchmark_rows:
        # rows checked in earlier runs (another session, another model) stay unless checked again
        checked = {(row["folder"], row["engine"]) for row in benchmark_rows}
        rows = [row for row in previous_rows(f"{args.results}.json")
                if (row["folder"], row.get("engine", "deepsparse")) not in checked] + benchmark_rows
        results = {"folders": rows, "rule": f"same answer text (QA) or label (SST-2) for >= {AGREEMENT:.0%}; INT8: "
                                            f"at most {1 - AGREEMENT:.0%} fewer than PyTorch against itself nudged "
                                            f"by float32 rounding"}
        write_json(f"{args.results}.json", results)
        with open(f"{args.results}.md", "w") as handle:
            handle.write(markdown(results) + "\n")
        print(markdown(results))
    sys.exit(0 if passed else 1)


if __name__ == "__main__":
    main()
