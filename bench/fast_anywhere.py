"""Accuracy against speed-up, per runtime: the structured rows' own timings, the layer-dropping and unstructured
rows' from the speed runs. Gives the accuracy-vs-speed-up plot, the speed goals table and the README's "Fast
anywhere" section, all from bench/results/*.json.

Every speed-up is against the dense FP32 export in onnxruntime, timed side by side with the file it measures."""

import json
import os

from bench.report import METRICS, TITLES, _percent, dense_metrics

# the trained-export runs (bench/speed.py --trained) that timed the unstructured rows in DeepSparse
TRAINED_SPEED_FILES = {"squad": "speed_trained_qa.json", "sst2": "speed_trained_sst2.json"}
STRUCTURED_SPEED_FILE = "speed_structured.json"  # bench/speed.py --structured: the layer-dropped model's speed
LATENCY = "1x128"  # the measure every family has; structured rows also have their table's throughput shape
FAMILIES = {  # family -> (runtime, colour)
    "structured in onnxruntime": ("onnxruntime", "tab:blue"),
    "structured in OpenVINO": ("openvino", "tab:orange"),
    "unstructured in DeepSparse": ("deepsparse", "tab:gray"),
    "layer dropping": ("onnxruntime", "tab:green"),
}
RUNTIME_NAMES = {"onnxruntime": "onnxruntime", "openvino": "OpenVINO",
                 "deepsparse": "DeepSparse (end-of-life, evaluation licence)"}
# issue 38's goals: (at least this speed-up, keeping at least this % of the dense score), the first is the goal
SPEED_GOALS = {"squad": ((3.0, 95.0), (4.3, 90.0)), "sst2": ((3.0, 99.0),)}
BUDGETS = (2.0, 3.0, 4.0)


def _load(results_dir, name):
    path = os.path.join(results_dir, name)
    if not os.path.isfile(path):
        return None
    with open(path) as handle:
        return json.load(handle)


def _timed_speedups(speed: dict, models: str, engine: str, measure: str) -> dict:
    """{model: speed-up} from a speed run's rows, against its dense FP32 file in onnxruntime at that measure."""
    rows = [r for r in speed["rows"] if r["measure"].endswith(measure) and "median_ms" in r]
    base = next((r["median_ms"] for r in rows if r[models] == "dense" and r["engine"] == "onnxruntime"), None)
    return {r[models]: base / r["median_ms"] for r in rows if base and r["engine"] == engine}


def points(results: dict, results_dir: str) -> list[dict]:
    """Each (family, row) that has both a score and a speed-up at LATENCY: {family, row, score, share, speedup}."""
    table, rows = results["table"], results["rows"]
    if "dense" not in rows:
        return []
    key = METRICS[table][0][1]
    found = []

    def add(family, name, speedup):
        score, dense = rows[name]["metrics"].get(key), dense_metrics(rows[name], rows).get(key)
        if score is not None and dense and speedup:
            found.append({"family": family, "row": name, "score": _percent(table, score),
                          "share": 100 * score / dense, "speedup": speedup})

    for name, row in rows.items():
        if row.get("speed"):  # a structured row: its own export timed against the dense one it started from
            for family in ("structured in onnxruntime", "structured in OpenVINO"):
                add(family, name, row["speed"]["speedup"][LATENCY][FAMILIES[family][0]])
    trained = _load(results_dir, TRAINED_SPEED_FILES.get(table, ""))
    if trained:
        for name, speedup in _timed_speedups(trained, "folder", "deepsparse", LATENCY).items():
            if name in rows and name != "dense":
                add("unstructured in DeepSparse", name, speedup)
    structured_speed = _load(results_dir, STRUCTURED_SPEED_FILE)
    if structured_speed:
        dropped = {r["model"]: len(r["widths"]) for r in structured_speed["rows"] if "layers_kept" in r}
        speedups = _timed_speedups(structured_speed, "model", "onnxruntime", LATENCY)
        for name, row in rows.items():  # the speed of a depth is the same whatever the weights
            for model, layers in dropped.items():
                if row["method"].startswith("layer dropping") and row["layers"] == layers:
                    add("layer dropping", name, speedups.get(model))
    return found


def _best(candidates):
    return max(candidates, key=lambda p: (p["score"], p["speedup"]), default=None)


def speed_goals_table(results: dict) -> str:
    """Each speed goal: the fastest structured row (either runtime, either shape) that keeps the goal's share."""
    table, rows = results["table"], results["rows"]
    structured = {name: row for name, row in rows.items() if row.get("speed")}
    if table not in SPEED_GOALS or not structured:
        return ""
    key = METRICS[table][0][1]
    offers = []
    for name, row in structured.items():
        dense = dense_metrics(row, rows).get(key)
        if dense is None or key not in row["metrics"]:
            continue
        share = 100 * row["metrics"][key] / dense
        for measure, engines in row["speed"]["speedup"].items():
            for engine in ("onnxruntime", "openvino"):
                offers.append((engines[engine], share, name, engine, measure))
    lines = ["| goal | fastest row that keeps the share | runtime, shape | speed-up | of dense | met? |",
             "|---|---|---|---|---|---|"]
    for speedup, share in SPEED_GOALS[table]:
        kept = [offer for offer in offers if offer[1] >= share]
        if not kept:
            lines.append(f"| >= {speedup:g}x at >= {share:g}% of dense | none keeps {share:g}% | - | - | - | **no** |")
            continue
        fastest, kept_share, name, engine, measure = max(kept)
        verdict = "yes" if fastest >= speedup else f"**no** ({fastest - speedup:+.2f}x)"
        lines.append(f"| >= {speedup:g}x at >= {share:g}% of dense | {name} | {RUNTIME_NAMES[engine]}, {measure} | "
                     f"{fastest:.2f}x | {kept_share:.1f}% | {verdict} |")
    return ("**Speed goals** (each row against the dense model it started from; speed-ups over the dense FP32 "
            "export in onnxruntime)\n\n" + "\n".join(lines))


def fast_anywhere(all_results: list, results_dir: str) -> str:
    """For each table and speed budget, the most accurate row that reaches it at batch-1 latency in each runtime."""
    sections = []
    for results in all_results:
        found = points(results, results_dir)
        if not found:
            continue
        table, rows = results["table"], results["rows"]
        label = METRICS[table][0][0]
        runtimes = list(dict.fromkeys(FAMILIES[p["family"]][0] for p in found))
        lines = ["| at least | " + " | ".join(RUNTIME_NAMES[r] for r in runtimes) + " |",
                 "|---|" + "---|" * len(runtimes)]
        shown = []
        for budget in BUDGETS:
            cells = []
            for runtime in runtimes:
                best = _best(p for p in found if FAMILIES[p["family"]][0] == runtime and p["speedup"] >= budget)
                cells.append(f"`{best['row']}`: {label} {best['score']:.1f} ({best['share']:.0f}% of dense), "
                             f"{best['speedup']:.1f}x" if best else "-")
                shown += [best["row"]] if best else []
            lines.append(f"| {budget:g}x | " + " | ".join(cells) + " |")
        used = dict.fromkeys(shown)
        recipes = "; ".join(f"`{name}`: {recipe_in_words(rows[name])}" for name in used)
        sections.append(f"**{TITLES.get(table, table)}** (batch 1 x 128 tokens; {label} of the row, share of the "
                        f"dense row, speed-up over dense FP32 in onnxruntime)\n\n" + "\n".join(lines)
                        + f"\n\nRecipes: {recipes}.")
    return "\n\n".join(sections)


def recipe_in_words(row: dict) -> str:
    """The recipe file and the arguments a row ran it with, speed target first."""
    args = row.get("recipe_args") or {}
    shown = {k: v for k, v in args.items() if k in ("speedup", "num_epochs")}
    extra = f" with {', '.join(f'{k}={v:g}' for k, v in shown.items())}" if shown else ""
    layers = f", --layers_to_keep {row['layers_to_keep']}" if row.get("layers_to_keep") else ""
    int8 = f" on `{row['start_from']}`" if "INT8" in row["method"] else ""
    return f"`recipes/{row['recipe']}`{extra}{layers}{int8}"


def plot_speed(all_results: list, results_dir: str, path: str):
    """Score against batch-1 speed-up, one panel per table, one curve per family (its best score at each speed:
    the points on no curve are beaten by a faster and more accurate row of their family)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [(r, points(r, results_dir)) for r in all_results]
    shown = [(r, found) for r, found in shown if found]
    if not shown:
        return False
    figure, axes = plt.subplots(1, len(shown), figsize=(6.5 * len(shown), 5.0), squeeze=False)
    for axis, (results, found) in zip(axes[0], shown):
        table = results["table"]
        label, key = METRICS[table][0]
        dense = _percent(table, results["rows"]["dense"]["metrics"][key])
        axis.axhline(dense, color="black", linestyle="--", linewidth=1, label=f"dense FP32 ({dense:.1f})")
        goal_speedup, goal_share = SPEED_GOALS.get(table, ((None, None),))[0]
        if goal_speedup:
            axis.axhline(dense * goal_share / 100, color="tab:red", linestyle=":", linewidth=1,
                         label=f"goal: {goal_share:g}% of dense at >= {goal_speedup:g}x")
            axis.axvline(goal_speedup, color="tab:red", linestyle=":", linewidth=1)
        for family, (_, colour) in FAMILIES.items():
            mine = sorted((p for p in found if p["family"] == family), key=lambda p: p["speedup"])
            if not mine:
                continue
            front = [p for p in mine if not any(q["speedup"] >= p["speedup"] and q["score"] > p["score"]
                                                for q in mine)]
            axis.plot([1.0] + [p["speedup"] for p in front], [dense] + [p["score"] for p in front], color=colour,
                      label=family)
            axis.scatter([p["speedup"] for p in mine], [p["score"] for p in mine], color=colour, zorder=3)
            for p in mine:
                axis.annotate(p["row"], (p["speedup"], p["score"]), textcoords="offset points", xytext=(4, 2),
                              fontsize=6, color=colour)
        axis.set_title(TITLES.get(table, table))
        axis.set_xlabel("speed-up over the dense FP32 export in onnxruntime, batch 1 x 128 tokens")
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="lower left")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return True
