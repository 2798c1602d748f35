"""The benchmark harness keeps working: a tiny table on the built-in demo, resumable, regenerated from JSON."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import REPO


def test_tiny_benchmark_writes_rows_and_resumes(tmp_path):
    results, work = tmp_path / "results", tmp_path / "work"
    command = [sys.executable, os.path.join(REPO, "bench", "run.py"), "--tiny", "--results_dir", str(results),
               "--work_dir", str(work)]
    done = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    table = json.load(open(results / "tiny.json"))
    dense, distilled = table["rows"]["dense"], table["rows"]["gmp80_distill"]
    assert dense["sparsity"] < 0.01 and abs(distilled["sparsity"] - 0.80) < 0.01
    assert distilled["distilled"] and distilled["pruning_epochs"] == 0.5
    assert "eval_f1" in distilled["metrics"] and distilled["onnx_parity_max_abs_diff"] < 1e-4
    assert "--teacher_model_name_or_path" in distilled["command"]
    markdown = (results / "tiny.md").read_text()
    assert "| gmp80_distill | GMP | 80% |" in markdown
    # a recovery row starts from the dense row's fine-tuned model, and its cost shows that model's too
    recovery = table["rows"]["ft_gmp80_distill"]
    at = recovery["command"].index("--model_name_or_path")
    assert recovery["command"][at + 1].endswith(os.path.join("tiny", "dense")) and recovery["start_from"] == "dense"
    assert abs(recovery["sparsity"] - 0.80) < 0.01
    assert "| ft_gmp80_distill | GMP from fine-tuned | 80% |" in markdown and " + dense " in markdown
    # ... and records that model as it was on this machine: the start point (and teacher) really used
    assert recovery["start_points"]["dense"]["metrics"] == dense["metrics"]
    assert recovery["start_points"]["dense"]["train_runtime_s"] == dense["train_runtime_s"]

    # a structured row records the widths it kept and its export's speed beside the dense export's, per engine
    structured = table["rows"]["ft_struct50_distill"]
    assert sum(h for h, _ in structured["widths"]) == 4 and structured["parameters"] < dense["parameters"]
    assert set(structured["speed"]["speedup"]) == {"1x128", "16x128"}
    assert all(value > 0 for shape in structured["speed"]["speedup"].values() for value in shape.values())
    assert "| ft_struct50_distill | " in markdown and "Structured rows" in markdown

    # finished rows are not run again
    again = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert again.returncode == 0 and "[bench]" not in again.stdout

    # an INT8 row is QAT on the pruned row, and records both models under it (its start point and teacher)
    int8 = table["rows"]["ft_gmp80_distill_int8"]
    assert int8["start_from"] == "ft_gmp80_distill" and abs(int8["sparsity"] - 0.80) < 0.01
    assert set(int8["start_points"]) == {"ft_gmp80_distill", "dense"}

    # on a fresh machine the models are gone (the work folder is not committed): the INT8 row needs the pruned
    # row's model, which needs the dense one; both are trained again, in that order, and their recorded rows are
    # kept as they were
    shutil.rmtree(work / "tiny")
    del table["rows"]["ft_gmp80_distill_int8"]
    (results / "tiny.json").write_text(json.dumps(table))
    third = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONWARNINGS": "ignore"})
    assert third.returncode == 0, third.stdout[-2000:] + third.stderr[-2000:]
    retrained = [line for line in third.stdout.splitlines() if "retraining" in line]
    assert [line.split("retraining ")[1] for line in retrained] == ["dense, which it needs",
                                                                    "ft_gmp80_distill, which it needs"]
    rerun = json.load(open(results / "tiny.json"))
    assert rerun["rows"]["dense"] == dense and rerun["rows"]["ft_gmp80_distill"] == recovery
    assert "ft_gmp80_distill_int8" in rerun["rows"]


def _row(f1, **extra):
    return {"metrics": {"eval_f1": f1}, **extra}


def test_findings_table_says_which_of_the_seeds_findings_hold():
    from bench.report import findings_table

    results = {"table": "squad", "rows": {"gmp80": _row(70.0), "oneshot80": _row(60.0), "gmp80_distill": _row(69.8),
                                          "layers3": _row(72.0), "dense": _row(75.0)}}
    lines = findings_table(results).splitlines()
    assert "| GMP beats one-shot | gmp80 vs oneshot80 | +10.00 | yes |" in lines
    assert "| distillation recovers accuracy | gmp80_distill vs gmp80 | -0.20 | within noise |" in lines
    assert "| pruning beats layer dropping | gmp80 vs layers3 | -2.00 | **no** |" in lines
    assert len(lines) == 5  # header, rule, and only the comparisons whose two rows exist
    assert findings_table({"table": "squad", "rows": {"dense": _row(75.0)}}) == ""


def test_goals_table_measures_the_best_row_per_sparsity_and_int8_against_its_fp32_row():
    from bench.report import goals_table

    def row(f1, sparsity, method="GMP", **extra):
        return _row(f1, sparsity=sparsity, method=method, **extra)

    results = {"table": "squad", "rows": {
        "dense": row(80.0, 0.0, "dense"), "gmp80": row(60.0, 0.8), "ft_obs80": row(77.0, 0.8),
        "ft_obs90": row(64.0, 0.9),
        "ft_obs80_int8": row(75.5, 0.8, "OBS + INT8", start_from="ft_obs80"),  # scores best at 80% but is INT8
        "dense_int8": row(79.5, 0.0, "dense + INT8", start_from="dense")}}
    lines = goals_table(results).splitlines()
    # 77 / 80 = 96.25% >= 95%; 64 / 80 = 80% < 85%
    assert "| best 80% row keeps >= 95% of dense | ft_obs80 | 77.00 | dense 80.00 | 96.2% | yes |" in lines
    assert "| best 90% row keeps >= 85% of dense | ft_obs90 | 64.00 | dense 80.00 | 80.0% | **no** (-5.0) |" in lines
    # an INT8 row is measured against the FP32 row it was trained from, and shows that row's score
    assert ("| INT8 costs <= 1 point | ft_obs80_int8 vs ft_obs80 | 75.50 | ft_obs80 77.00 | -1.50 points | **no** |"
            in lines)
    assert "| INT8 costs <= 1 point | dense_int8 vs dense | 79.50 | dense 80.00 | -0.50 points | yes |" in lines
    assert len(lines) == 6
    # on a new machine the FP32 row was trained again as the QAT's start point, and scored otherwise: the INT8
    # row is measured against the model it really started from
    results["rows"]["ft_obs80_int8"]["start_points"] = {"ft_obs80": _row(76.0), "dense": _row(80.0)}
    assert ("| INT8 costs <= 1 point | ft_obs80_int8 vs ft_obs80 | 75.50 | ft_obs80 (retrained) 76.00 | -0.50 points "
            "| yes |" in goals_table(results).splitlines())
    assert goals_table({"table": "mrpc", "rows": results["rows"]}) == ""  # no goals set for that table


def test_trained_speed_goals_measure_each_int8_export_against_the_dense_fp32_one_in_onnxruntime():
    from bench.speed import trained_goals

    def file(folder, precision, sparsity):
        return {"folder": folder, "measure": "file", "precision": precision, "sparsity": sparsity, "bytes": 1}

    def timed(folder, engine, latency_ms, throughput_ms):
        return [{"folder": folder, "measure": "latency 1x128", "engine": engine, "median_ms": latency_ms},
                {"folder": folder, "measure": "throughput 16x384", "engine": engine, "median_ms": throughput_ms}]

    result = {"head": "qa", "folders": ["/w/dense", "/w/obs90", "/w/obs90_int8"],
              "rows": [file("/w/dense", "fp32", 0.0), file("/w/obs90", "fp32", 0.9),
                       file("/w/obs90_int8", "int8", 0.9000000188)]
              + timed("/w/dense", "onnxruntime", 30.0, 1200.0) + timed("/w/dense", "deepsparse", 20.0, 100.0)
              + timed("/w/obs90_int8", "deepsparse", 12.0, 240.0) + timed("/w/obs90", "deepsparse", 1.0, 1.0)}
    checks = {check["measure"]: check for check in trained_goals(result)}
    # only the 90% INT8 file is measured, in DeepSparse, against the dense file in onnxruntime (not in DeepSparse)
    assert {check["export"] for check in checks.values()} == {"obs90_int8"} and len(trained_goals(result)) == 2
    assert checks["throughput 16x384"]["measured"] == pytest.approx(5.0) and checks["throughput 16x384"]["met"]
    assert checks["latency 1x128"]["measured"] == pytest.approx(2.5) and not checks["latency 1x128"]["met"]
    # no goals when the baseline is not the dense FP32 model, or for SST-2 (the goals are set on QA)
    assert trained_goals({**result, "folders": result["folders"][1:]}) == []
    assert trained_goals({**result, "head": "sst2"}) == []


def test_a_rows_cost_adds_every_model_it_needs():
    from bench.report import markdown_table, total_minutes

    def row(minutes, **extra):
        return {"method": "m", "sparsity": 0.8, "epochs": 1, "pruning_epochs": 0, "distilled": True, "layers": 6,
                "nonzero_parameters": 1, "metrics": {}, "train_runtime_s": 60.0 * minutes, "global_steps": 10,
                **extra}

    # the INT8 row records the two models under it as they were trained on its machine, not as the table has them
    int8 = row(67, start_from="ft", start_points={"ft": row(68), "dense": row(57)})
    results = {"table": "sst2", "rows": {"dense": row(32), "ft": row(60, start_from="dense"), "ft_int8": int8,
                                         "distilled": row(48, teacher="dense")}}
    lines = markdown_table(results).splitlines()
    assert lines[-2].endswith("| 67 min + ft 68 min + dense 57 min |")
    assert lines[-3].endswith("| 60 min + dense 32 min |") and lines[-4].endswith("| 32 min |")
    # a teacher is trained first too, even when the row starts from the pretrained model
    assert lines[-1].endswith("| 48 min + dense 32 min |")
    assert total_minutes(int8, results["rows"]) == pytest.approx(67 + 68 + 57)
    assert total_minutes(results["rows"]["distilled"], results["rows"]) == pytest.approx(48 + 32)

    # a start point resumed across sessions: its folder timed only its last attempt, the table's row knows the rest
    resumed = row(30, start_from="dense", resumed_from_step=5)  # 30 min for the last 5 of 10 steps
    results["rows"]["ft"] = resumed
    int8["start_points"]["ft"] = row(30)
    assert total_minutes(int8, results["rows"]) == pytest.approx(67 + 60 + 57)


def test_train_time_of_a_resumed_row_sums_its_attempts_or_is_extrapolated():
    from bench.report import train_time

    assert train_time({"train_runtime_s": 600.0, "global_steps": 100}) == "10 min"
    # 25 of 100 steps ran before the interruption: the last attempt's 600 s covered 75 steps
    assert train_time({"train_runtime_s": 600.0, "global_steps": 100, "resumed_from_step": 25}) == "≈13 min"
    # checkpoints that kept their time give every attempt's: exact, whatever the last attempt took
    assert train_time({"train_runtime_s": 600.0, "global_steps": 100, "resumed_from_step": 25,
                       "train_runtime_all_attempts_s": 1500.0}) == "25 min"
    # resumed from its final checkpoint (killed after training, before its row was recorded): nothing was timed
    assert train_time({"train_runtime_s": 0.5, "global_steps": 100, "resumed_from_step": 100}) == "-"


def test_every_benchmark_row_loads_its_recipe_with_its_arguments():
    # a recipe variable the recipe does not define is an error in SparseML: catch it here, not hours into a run
    sys.path.insert(0, REPO)
    from bench.run import tables
    from sparsebert.recipe import load_recipe

    for table, (_, _, rows, _) in tables("data", "model").items():
        for row in rows:
            manager = load_recipe(os.path.join(REPO, "recipes", row.recipe), row.recipe_args)
            if "num_epochs" in row.recipe_args:
                assert manager.max_epochs == row.recipe_args["num_epochs"], (table, row.name)


def test_point_names_that_would_overlap_are_moved_apart_in_their_order():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from bench.report import spread_labels

    figure, axis = plt.subplots()
    axis.set(xlim=(0, 100), ylim=(0, 100))  # a name is drawn only for a point inside the axes
    # an INT8 row on its FP32 row, a third row 0.3 below: three names on one spot; a fourth far away stays put
    points = [(40, 68.05, "ft_obs80_distill"), (40, 68.05, "ft_obs80_distill_int8"), (40, 67.75, "other"),
              (40, 10.0, "far")]
    labels = [axis.annotate(name, (x, y), textcoords="offset points", xytext=(4, 0), va="center")
              for x, y, name in points]
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    far_before = labels[3].get_window_extent(renderer)
    spread_labels(figure, labels)
    figure.canvas.draw()
    boxes = [label.get_window_extent(renderer) for label in labels]
    for upper, lower in ((0, 1), (1, 2)):
        assert boxes[upper].y0 >= boxes[lower].y1 - 0.5  # no overlap, the order of the scores kept
    assert boxes[3].y0 == pytest.approx(far_before.y0)
    plt.close(figure)


def test_tables_plots_and_readme_are_regenerated_from_the_json(tmp_path):
    from bench.report import regenerate

    def row(accuracy, minutes, **extra):
        return {"method": "GMP", "sparsity": 0.8, "epochs": 2, "pruning_epochs": 1, "distilled": False, "layers": 6,
                "nonzero_parameters": 10, "parameters": 20, "metrics": {"eval_accuracy": accuracy},
                "train_runtime_s": 60.0 * minutes, "global_steps": 10, "environment": {"cpu": "test CPU"}, **extra}

    rows = {"dense": {**row(0.9, 30), "method": "dense", "sparsity": 0.0, "nonzero_parameters": 20},
            "gmp80": row(0.88, 40, start_from="dense")}
    results = tmp_path / "bench" / "results"  # a checkout's layout
    results.mkdir(parents=True)
    (results / "sst2.json").write_text(json.dumps({"table": "sst2", "budget": "a test budget", "rows": rows}))
    # bench/speed.py --trained writes its results beside the tables: rows, but no table (it once crashed the report)
    (results / "speed_trained_qa.json").write_text(json.dumps({"head": "qa", "folders": [], "rows": []}))
    page = tmp_path / "bench" / "README.md"
    page.write_text("before\n<!-- bench:start -->\nold\n<!-- bench:end -->\nafter\n")
    regenerate(str(results), str(tmp_path))
    text = page.read_text()
    assert text.startswith("before\n") and text.endswith("after\n") and "old" not in text
    assert "| gmp80 | GMP | 80% |" in text and "| 40 min + dense 30 min |" in text
    assert "| best 80% row keeps >= 99% of dense | gmp80 | 88.00 | dense 90.00 | 97.8% | **no** (-1.2) |" in text
    for plot in ("accuracy_vs_sparsity.png", "accuracy_vs_cost.png"):
        # the page links each plot by a path that resolves from where the page is
        assert (results / plot).stat().st_size > 10_000 and f"(results/{plot})" in text


def test_committed_results_hold_no_path_of_the_machine_that_made_them():
    # a result names files by row or relative path; an absolute one says nothing on another machine
    def strings(value):
        if isinstance(value, dict):
            for item in value.values():
                yield from strings(item)
        elif isinstance(value, list):
            for item in value:
                yield from strings(item)
        elif isinstance(value, str):
            yield value

    results = os.path.join(REPO, "bench", "results")
    for name in sorted(os.listdir(results)):
        if name.endswith(".json"):
            with open(os.path.join(results, name)) as handle:
                absolute = [s for s in strings(json.load(handle)) if os.path.isabs(s)]
            assert absolute == [], (name, absolute[:3])


def test_structured_rows_are_measured_against_the_dense_model_they_started_from():
    sys.path.insert(0, REPO)
    from bench.report import structured_table

    speed = {"where": "2 cores", "speedup": {"1x128": {"onnxruntime": 2.0, "openvino": 2.5},
                                             "32x64": {"onnxruntime": 2.2, "openvino": 3.0}}}
    rows = {"dense": {"metrics": {"eval_accuracy": 0.90}},
            "ft_struct2x_distill": {"metrics": {"eval_accuracy": 0.88}, "parameters": 12_345, "widths": [[6, 768]],
                                    "start_points": {"dense": {"metrics": {"eval_accuracy": 0.80}}}, "speed": speed}}
    table = structured_table({"table": "sst2", "rows": rows})
    assert "| ft_struct2x_distill | (6,768) | 12,345 | 88.00 | 110.0% | 2.00x | 2.50x | 2.20x | 3.00x |" in table
    assert structured_table({"table": "sst2", "rows": {"dense": rows["dense"]}}) == ""


def _speed(ort, openvino, throughput=None):
    speedup = {"1x128": {"onnxruntime": ort, "openvino": openvino}}
    if throughput:
        speedup["32x64"] = {"onnxruntime": throughput[0], "openvino": throughput[1]}
    return {"where": "2 cores", "speedup": speedup}


def _timed(models, key, measure, engine_ms):
    """A speed run's rows: dense in onnxruntime at 10 ms, each (model, engine) at its ms."""
    rows = [{key: "dense", "engine": "onnxruntime", "measure": measure, "median_ms": 10.0}]
    return rows + [{key: model, "engine": engine, "measure": measure, "median_ms": ms, **models.get(model, {})}
                   for (model, engine), ms in engine_ms.items()]


def _speed_results(tmp_path):
    """An SST-2 table with structured rows, layer dropping and an unstructured row timed in DeepSparse."""
    accuracy = {"eval_accuracy": 0.90}
    rows = {"dense": {"metrics": accuracy, "method": "dense", "layers": 6},
            "layers3_distill": {"metrics": {"eval_accuracy": 0.87}, "method": "layer dropping", "layers": 3,
                                "recipe": "noprune2epoch.yaml", "layers_to_keep": 3},
            "ft_obs90_distill_int8": {"metrics": {"eval_accuracy": 0.895}, "method": "OBS + INT8", "layers": 6,
                                      "recipe": "qat1epoch.yaml", "start_from": "ft_obs90_distill"},
            # keeps 99.4% of the dense model it started from (0.895 / 0.90) at 3.2x in OpenVINO
            "ft_struct3x_distill": {"metrics": {"eval_accuracy": 0.895}, "method": "structured from fine-tuned",
                                    "layers": 5, "recipe": "structured_speedup.yaml",
                                    "recipe_args": {"speedup": 3.0}, "speed": _speed(2.9, 3.2, (3.1, 3.4)),
                                    "start_points": {"dense": {"metrics": accuracy}}},
            # faster, but keeps 97.8%
            "ft_struct4x_distill": {"metrics": {"eval_accuracy": 0.88}, "method": "structured from fine-tuned",
                                    "layers": 4, "recipe": "structured_speedup.yaml",
                                    "recipe_args": {"speedup": 4.0}, "speed": _speed(4.1, 3.9),
                                    "start_points": {"dense": {"metrics": accuracy}}}}
    (tmp_path / "speed_trained_sst2.json").write_text(json.dumps({"rows": _timed(
        {}, "folder", "latency 1x128", {("ft_obs90_distill_int8", "deepsparse"): 2.0})}))
    (tmp_path / "speed_structured.json").write_text(json.dumps({"rows": _timed(
        {"layers3": {"layers_kept": [0, 2, 5], "widths": [[12, 1536]] * 3}}, "model", "latency 1x128",
        {("layers3", "onnxruntime"): 5.0})}))
    return {"table": "sst2", "budget": "b", "rows": rows}


def test_each_runtime_family_gets_its_speedups_from_its_own_timing(tmp_path):
    sys.path.insert(0, REPO)
    from bench.fast_anywhere import points

    found = {(p["family"], p["row"]): round(p["speedup"], 2) for p in points(_speed_results(tmp_path), tmp_path)}
    assert found == {("structured in onnxruntime", "ft_struct3x_distill"): 2.9,
                     ("structured in OpenVINO", "ft_struct3x_distill"): 3.2,
                     ("structured in onnxruntime", "ft_struct4x_distill"): 4.1,
                     ("structured in OpenVINO", "ft_struct4x_distill"): 3.9,
                     ("unstructured in DeepSparse", "ft_obs90_distill_int8"): 5.0,
                     ("layer dropping", "layers3_distill"): 2.0}


def test_speed_goal_takes_the_fastest_row_keeping_the_share_at_any_runtime_and_shape(tmp_path):
    sys.path.insert(0, REPO)
    from bench.fast_anywhere import speed_goals_table

    results = _speed_results(tmp_path)
    table = speed_goals_table(results)
    # 4x keeps only 97.8% (< 99%): the goal falls to the 3x row, fastest in OpenVINO at 32x64
    assert "| >= 3x at >= 99% of dense | ft_struct3x_distill | OpenVINO, 32x64 | 3.40x | 99.4% | yes |" in table
    results["rows"]["ft_struct3x_distill"]["speed"] = _speed(2.5, 2.8)
    assert "| ft_struct3x_distill | OpenVINO, 1x128 | 2.80x | 99.4% | **no** (-0.20x) |" in speed_goals_table(results)


def test_fast_anywhere_names_the_most_accurate_row_reaching_each_budget_per_runtime(tmp_path):
    sys.path.insert(0, REPO)
    from bench.fast_anywhere import fast_anywhere, plot_speed

    results = _speed_results(tmp_path)
    section = fast_anywhere([results], str(tmp_path))
    lines = {line.split(" | ")[0]: line for line in section.splitlines() if line.startswith("| ") and "x |" in line}
    # columns: onnxruntime, OpenVINO, DeepSparse
    assert lines["| 2x"].split(" | ")[1].startswith("`ft_struct3x_distill`")  # 3x beats layers3 on accuracy
    assert lines["| 3x"].split(" | ")[1].startswith("`ft_struct4x_distill`")  # the only one reaching 3x there
    assert lines["| 3x"].split(" | ")[2].startswith("`ft_struct3x_distill`: accuracy 89.5 (99% of dense), 3.2x")
    assert lines["| 4x"].split(" | ")[2] == "-"
    assert "`ft_struct3x_distill`: `recipes/structured_speedup.yaml` with speedup=3" in section
    assert "`layers3_distill`" not in section  # reaches 2x, but a structured row does too, more accurately
    assert "`ft_obs90_distill_int8`: `recipes/qat1epoch.yaml` on `ft_obs90_distill`" in section
    assert plot_speed([results], str(tmp_path), str(tmp_path / "speed.png"))
    assert (tmp_path / "speed.png").stat().st_size > 10_000
