"""Markdown tables, the accuracy-vs-sparsity and accuracy-vs-cost plots and the README section, all regenerated
from bench/results/*.json."""

import glob
import json
import os

METRICS = {  # table -> (column, key in the results) in the order shown
    "squad": (("F1", "eval_f1"), ("EM", "eval_exact_match")),
    "sst2": (("accuracy", "eval_accuracy"),),
    "mrpc": (("F1", "eval_f1"), ("accuracy", "eval_accuracy")),
    "rte": (("accuracy", "eval_accuracy"),),
    "tiny": (("F1", "eval_f1"), ("EM", "eval_exact_match")),
}
TITLES = {"squad": "SQuAD v1.1", "sst2": "SST-2", "mrpc": "MRPC", "rte": "RTE", "tiny": "demo"}


PERCENT_TABLES = ("squad", "tiny")  # SQuAD metrics are percentages already; GLUE ones are fractions


def _percent(table, value):
    return value if table in PERCENT_TABLES else 100 * value


def markdown_table(results: dict) -> str:
    table = results["table"]
    metric_columns = METRICS.get(table, ())
    header = ["row", "method", "sparsity", "epochs", "pruning epochs", "distilled", "layers", "non-zero params"]
    header += [name for name, _ in metric_columns] + ["train time"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in results["rows"].items():
        cells = [name, row["method"], f"{100 * row['sparsity']:.0f}%", f"{row['epochs']:.3g}",
                 f"{row['pruning_epochs']:g}", "yes" if row["distilled"] else "no", str(row["layers"]),
                 f"{row['nonzero_parameters']:,}"]
        cells += [f"{_percent(table, row['metrics'][key]):.2f}" if key in row["metrics"] else "-"
                  for _, key in metric_columns]
        cells.append(" + ".join([train_time(row)] + [f"{name} {train_time(model)}"
                                                     for name, model in models_behind(row, results["rows"])]))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def models_behind(row, rows: dict) -> list:
    """[(name, row)] of the models this row needs trained first, nearest first: the model it starts from and its
    teacher, then theirs (an INT8 row: its FP32 row, then the dense one that started from and teaches). A row
    recorded on a machine that trained them again uses those records: all of it is in the row's cost."""
    behind, recorded = [], row.get("start_points", {})
    wanted = [row.get("start_from"), row.get("teacher")]
    while wanted:
        name = wanted.pop(0)
        model, own = recorded.get(name), rows.get(name)
        if model is None or (own and model.get("train_runtime_s") == own.get("train_runtime_s")):
            model = own  # the table's record of that same run also knows whether it was resumed
        if not name or name in (n for n, _ in behind) or not model:
            continue
        behind.append((name, model))
        links = rows.get(name, {})  # recorded start points keep scores and times, not what they started from
        wanted += [links.get("start_from"), links.get("teacher")]
    return behind


def train_minutes(row) -> float | None:
    """Training minutes over all attempts; a row resumed from a checkpoint that did not keep its time timed
    only its last attempt, so its total is extrapolated from that attempt's steps. None when nothing was timed."""
    if row.get("train_runtime_all_attempts_s"):
        return row["train_runtime_all_attempts_s"] / 60
    seconds, resumed = row.get("train_runtime_s"), row.get("resumed_from_step", 0)
    if not seconds or resumed >= row.get("global_steps", 1):  # resumed from its final checkpoint: nothing was timed
        return None
    if resumed:
        seconds *= row["global_steps"] / (row["global_steps"] - resumed)
    return seconds / 60


def train_time(row) -> str:
    """Training minutes as the tables show them (≈: extrapolated from a resumed row's last attempt)."""
    minutes = train_minutes(row)
    if minutes is None:
        return "-"
    extrapolated = row.get("resumed_from_step", 0) and not row.get("train_runtime_all_attempts_s")
    return f"{'≈' if extrapolated else ''}{minutes:.0f} min"


def total_minutes(row, rows: dict) -> float | None:
    """The row's training time plus that of every model it needs: what it costs from the pretrained model."""
    parts = [train_minutes(row)] + [train_minutes(model) for _, model in models_behind(row, rows)]
    return None if None in parts else sum(parts)


# Roughly one standard error of the dev-set estimate (binomial at the dense score and the dev-set size: SQuAD
# 10,570 questions, SST-2 872, MRPC 408, RTE 277): a smaller difference between two rows is not a finding.
NOISE = {"squad": 0.5, "sst2": 1.0, "mrpc": 2.0, "rte": 3.0, "tiny": 5.0}

# The seed's findings as (finding, better row, worse row): the claim is that the first row scores higher.
FINDINGS = (
    ("GMP beats one-shot", "gmp80", "oneshot80"),
    ("GMP beats one-shot", "gmp90", "oneshot90"),
    ("distillation recovers accuracy", "gmp80_distill", "gmp80"),
    ("distillation recovers accuracy", "gmp90_distill", "gmp90"),
    ("distillation recovers accuracy", "layers3_distill", "layers3"),
    ("pruning beats layer dropping", "gmp80", "layers3"),
    ("pruning beats layer dropping", "gmp80_distill", "layers3_distill"),
)


# What the recovery and INT8 rows are measured against: the best row at each sparsity keeps this share of the dense
# score (%), and INT8 costs at most this many points against the FP32 row it was trained from.
RECOVERY_GOALS = {"squad": {0.8: 95.0, 0.9: 85.0}, "sst2": {0.8: 99.0, 0.9: 97.0}}
INT8_GOAL_POINTS = 1.0


def _is_int8(row) -> bool:
    return "INT8" in row["method"]


def goals_table(results: dict) -> str:
    """The best FP32 row at each target sparsity against its share-of-dense goal, and each INT8 row against the
    FP32 model it started from (as recorded with the INT8 row: the table's row, or that row trained again)."""
    table, rows = results["table"], results["rows"]
    if table not in RECOVERY_GOALS or "dense" not in rows:
        return ""
    label, key = METRICS[table][0]

    def score(name):
        return _percent(table, rows[name]["metrics"][key])

    dense = score("dense")
    lines = [f"| goal | row | {label} | against | result | met? |", "|---|---|---|---|---|---|"]
    for sparsity, goal in RECOVERY_GOALS[table].items():
        candidates = [n for n, r in rows.items() if not _is_int8(r) and abs(r["sparsity"] - sparsity) < 0.005]
        if not candidates:
            continue
        best = max(candidates, key=score)
        share = 100 * score(best) / dense
        lines.append(f"| best {100 * sparsity:.0f}% row keeps >= {goal:g}% of dense | {best} | {score(best):.2f} | "
                     f"dense {dense:.2f} | {share:.1f}% | {'yes' if share >= goal else f'**no** ({share - goal:+.1f})'} |")
    for name, row in rows.items():
        fp32 = row.get("start_from")
        if not _is_int8(row) or fp32 not in rows:
            continue
        # against the FP32 model the QAT really started from: on another machine it was trained again
        started_from = row.get("start_points", {}).get(fp32, rows[fp32])
        fp32_score = _percent(table, started_from["metrics"][key])
        retrained = " (retrained)" if started_from["metrics"] != rows[fp32]["metrics"] else ""
        lost = fp32_score - score(name)
        lines.append(f"| INT8 costs <= {INT8_GOAL_POINTS:g} point | {name} vs {fp32} | {score(name):.2f} | "
                     f"{fp32}{retrained} {fp32_score:.2f} | "
                     f"{-lost:+.2f} points | {'yes' if lost <= INT8_GOAL_POINTS else '**no**'} |")
    return "\n".join(lines) if len(lines) > 2 else ""


def findings_table(results: dict) -> str:
    """Each of the seed's findings that this table's rows can test: the difference and whether it holds."""
    table, rows = results["table"], results["rows"]
    label, key = METRICS[table][0]
    lines = [f"| seed's finding | rows compared | {label} difference | holds here? |", "|---|---|---|---|"]
    for finding, better, worse in FINDINGS:
        if better not in rows or worse not in rows:
            continue
        difference = _percent(table, rows[better]["metrics"][key]) - _percent(table, rows[worse]["metrics"][key])
        verdict = "within noise" if abs(difference) < NOISE[table] else ("yes" if difference > 0 else "**no**")
        lines.append(f"| {finding} | {better} vs {worse} | {difference:+.2f} | {verdict} |")
    return "\n".join(lines) if len(lines) > 2 else ""


# one colour per method in every panel, so a method reads the same across tables
METHOD_COLORS = {"GMP": "tab:blue", "GMP + distill": "tab:orange", "one-shot": "tab:purple",
                 "layer dropping": "tab:green", "layer dropping + distill": "tab:red",
                 "GMP from fine-tuned + distill": "tab:brown", "OBS from fine-tuned + distill": "tab:pink",
                 "OBS one-shot": "tab:olive", "dense + INT8": "black",
                 "OBS from fine-tuned + INT8 + distill": "tab:cyan",
                 "GMP from fine-tuned + INT8 + distill": "tab:gray"}


def method_label(row) -> str:
    """The method as the plots' legends name it: distilled rows apart from the same method without a teacher."""
    return row["method"] + (" + distill" if row["distilled"] else "")


def plot(all_results: list, path: str):
    """Accuracy (F1 for SQuAD) against sparsity, one line per method, one panel per table."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in all_results if r["rows"] and r["table"] != "tiny"]
    if not shown:
        return
    figure, axes = plt.subplots(1, len(shown), figsize=(4.5 * len(shown), 5.2), squeeze=False)
    labels = []
    for axis, results in zip(axes[0], shown):
        table = results["table"]
        label, key = METRICS[table][0]
        series = {}
        for name, row in results["rows"].items():
            score = _percent(table, row["metrics"].get(key, 0.0))
            if name == "dense":  # the reference every method is measured against
                axis.axhline(score, color="gray", linestyle="--", linewidth=1, label=f"dense ({score:.1f})")
                continue
            method = method_label(row)
            removed = 100 * (1 - row["nonzero_parameters"] / _dense_parameters(results))
            series.setdefault(method, []).append((removed, score, name))
        for method, points in sorted(series.items()):
            points.sort()
            axis.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=method,
                      color=METHOD_COLORS.get(method))
            for removed, score, name in points:
                labels.append(axis.annotate(name, (removed, score), textcoords="offset points", xytext=(4, 0),
                                            va="center", fontsize=6))
        axis.set_title(TITLES.get(table, table))
        removed_max = max((p[0] for points in series.values() for p in points), default=0.0)
        axis.set_xlim(-2, max(50.0, removed_max + 5))  # from dense (0) on, so the drop from dense reads as a slope
        axis.set_xlabel("parameters removed, % of the dense model\n"
                        "(embeddings stay dense: 80% of the encoder ≈ 38%)", fontsize=8)
        axis.set_ylabel(label)
        axis.grid(alpha=0.3)
        axis.legend(fontsize=7, loc="upper center", bbox_to_anchor=(0.5, -0.22), ncol=2)  # below, off the points
    figure.tight_layout()
    spread_labels(figure, labels)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def spread_labels(figure, labels, passes=100):
    """Move the points' names apart vertically where they overlap (rows of nearly the same score and sparsity, an
    INT8 row on its FP32 row), keeping their top-to-bottom order, so each stays readable beside its point."""
    figure.canvas.draw()
    renderer = figure.canvas.get_renderer()
    boxes = [label.get_window_extent(renderer) for label in labels]
    centers = [(box.y0 + box.y1) / 2 for box in boxes]
    shifts = [0.0] * len(labels)  # display pixels
    order = sorted(range(len(labels)), key=lambda i: -centers[i])  # top first; pushes keep this order
    for _ in range(passes):
        moved = False
        for rank, upper in enumerate(order):
            for lower in order[rank + 1:]:
                a, b = boxes[upper], boxes[lower]
                if a.x1 <= b.x0 or b.x1 <= a.x0 or labels[upper].axes is not labels[lower].axes:
                    continue
                gap = (centers[upper] + shifts[upper]) - (centers[lower] + shifts[lower])
                needed = (a.height + b.height) / 2 + 1
                if gap < needed:
                    shifts[upper] += (needed - gap) / 2
                    shifts[lower] -= (needed - gap) / 2
                    moved = True
        if not moved:
            break
    for label, shift in zip(labels, shifts):
        x, y = label.xyann
        label.xyann = (x, y + shift * 72 / figure.dpi)  # pixels to the offset's points


COST_TABLES = ("squad", "sst2")  # the tables with recovery rows, whose start points and teachers count in the cost
MACHINE_MARKERS = ("o", "s", "^", "D")


def plot_cost(all_results: list, path: str):
    """Accuracy against what each row costs to train from the pretrained model (its time plus that of every model
    it needs), one panel per table; the marker says which machine timed the row."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shown = [r for r in all_results if r["rows"] and r["table"] in COST_TABLES]
    if not shown:
        return
    machines = list(dict.fromkeys(row.get("environment", {}).get("cpu", "?")
                                  for results in shown for row in results["rows"].values()))
    figure, axes = plt.subplots(1, len(shown), figsize=(8.5 * len(shown), 4.6), squeeze=False)
    labels = []
    for axis, results in zip(axes[0], shown):
        table, rows = results["table"], results["rows"]
        label, key = METRICS[table][0]
        methods, longest = set(), 0.0
        for name, row in rows.items():
            minutes = total_minutes(row, rows)
            if minutes is None or key not in row["metrics"]:
                continue
            method, score = method_label(row), _percent(table, row["metrics"][key])
            machine = row.get("environment", {}).get("cpu", "?")
            axis.scatter(minutes, score, color=METHOD_COLORS.get(method, "black"),
                         marker=MACHINE_MARKERS[machines.index(machine) % len(MACHINE_MARKERS)],
                         label=method if method not in methods else None, zorder=3)
            methods.add(method)
            longest = max(longest, minutes)
            labels.append(axis.annotate(f"{name} ({100 * row['sparsity']:.0f}%)", (minutes, score),
                                        textcoords="offset points", xytext=(4, 0), va="center", fontsize=6))
        for index, machine in enumerate(machines):  # legend entries for the marker shapes alone
            axis.scatter([], [], color="white", edgecolor="black",
                         marker=MACHINE_MARKERS[index % len(MACHINE_MARKERS)], label=f"timed on {machine}")
        axis.set_title(f"{TITLES.get(table, table)}: score against training cost")
        axis.set_xlabel("training minutes on 2 CPU cores, the row plus every model it needs\n"
                        "(its start point and its teacher; compare times within one machine)", fontsize=8)
        axis.set_ylabel(label)
        axis.set_xlim(0, 1.3 * longest)  # room for the rightmost row's name
        axis.grid(alpha=0.3)
        axis.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # beside the points, not on them
    figure.tight_layout()
    spread_labels(figure, labels)
    figure.savefig(path, dpi=110)
    plt.close(figure)


def extra_tables(results: dict) -> list[str]:
    """The tables shown under a benchmark's main one, where its rows give them anything to show."""
    from bench.fast_anywhere import speed_goals_table  # it builds on this module's tables

    return [extra for extra in (structured_table(results), speed_goals_table(results), goals_table(results),
                                findings_table(results)) if extra]


def dense_metrics(row: dict, rows: dict) -> dict:
    """The dense model's metrics a row is measured against: the dense start point it recorded (retrained on another
    machine, it may differ from the table's), else the table's dense row."""
    return row.get("start_points", {}).get("dense", rows.get("dense", {})).get("metrics", {})


def structured_table(results: dict) -> str:
    """The structured rows: the widths they kept, the share of the dense score, and the speed of their own export
    against the dense FP32 export in onnxruntime, timed side by side when the row finished."""
    table = results["table"]
    rows = {name: row for name, row in results["rows"].items() if row.get("speed")}
    if not rows:
        return ""
    column, key = METRICS[table][0]
    first = next(iter(rows.values()))
    measures = list(first["speed"]["speedup"])
    header = ["row", "(heads, FFN neurons) per layer", "parameters", column, "of dense"]
    header += [f"{engine} {measure}" for measure in measures for engine in ("onnxruntime", "OpenVINO")]
    lines = [f"**Structured rows: speed-ups of each row's own export over the dense FP32 export in onnxruntime** "
             f"({first['speed']['where']})", "",
             "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for name, row in rows.items():
        score = row["metrics"].get(key)
        base = dense_metrics(row, results["rows"]).get(key)
        share = f"{100 * score / base:.1f}%" if base and score is not None else "-"
        widths = " ".join(f"({h},{n})" for h, n in row["widths"])
        cells = [name, widths, f"{row['parameters']:,}",
                 f"{_percent(table, score):.2f}" if score is not None else "-", share]
        cells += [f"{row['speed']['speedup'][measure][engine]:.2f}x" for measure in measures
                  for engine in ("onnxruntime", "openvino")]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _dense_parameters(results):
    dense = results["rows"].get("dense")
    return dense["nonzero_parameters"] if dense else max(r["parameters"] for r in results["rows"].values())


def regenerate(results_dir: str, docs_root: str | None = None):
    """The Markdown tables and plots beside the JSON in results_dir, and with docs_root (the checkout), the
    generated sections of its pages (README.md, bench/README.md, docs/*.md), wherever their markers are."""
    all_results = []
    for path in sorted(glob.glob(os.path.join(results_dir, "*.json"))):
        with open(path) as handle:
            results = json.load(handle)
        if "budget" not in results:  # the speed results live beside the tables
            continue
        all_results.append(results)
        with open(os.path.join(results_dir, f"{results['table']}.md"), "w") as handle:
            handle.write(f"**{TITLES.get(results['table'], results['table'])}** — {results['budget']}\n\n")
            handle.write(markdown_table(results) + "\n")
            for extra in extra_tables(results):
                handle.write(f"\n{extra}\n")
    order = list(METRICS)
    all_results.sort(key=lambda r: order.index(r["table"]) if r["table"] in order else len(order))
    plot(all_results, os.path.join(results_dir, "accuracy_vs_sparsity.png"))
    plot_cost(all_results, os.path.join(results_dir, "accuracy_vs_cost.png"))
    from bench.fast_anywhere import fast_anywhere, plot_speed  # it builds on this module's tables

    plotted = plot_speed(all_results, results_dir, os.path.join(results_dir, "accuracy_vs_speedup.png"))
    if docs_root:
        replace_doc_section(docs_root, "bench", _tables_section(all_results), results_dir)
        body = fast_anywhere(all_results, results_dir) or "_No row has been timed in a runtime yet._"
        if plotted:
            body += "\n\n![accuracy against speed-up](bench/results/accuracy_vs_speedup.png)"
        replace_doc_section(docs_root, "fast_anywhere", body, results_dir)


DOC_PAGES = ("README.md", os.path.join("bench", "README.md"), os.path.join("docs", "*.md"))


def replace_doc_section(root: str, name: str, body: str, results_dir: str | None = None) -> list[str]:
    """Rewrite the text between `<!-- name:start -->` and `<!-- name:end -->` in every page under root that has
    them (atomically; the rest of the page is left alone). Links to bench/results/ are made relative to each page.
    Returns the pages rewritten."""
    start_marker, end_marker = f"<!-- {name}:start -->", f"<!-- {name}:end -->"
    results_dir = os.path.abspath(results_dir or os.path.join(root, "bench", "results"))
    written = []
    for page in sorted(p for pattern in DOC_PAGES for p in glob.glob(os.path.join(root, pattern))):
        text = open(page).read()
        if start_marker not in text or end_marker not in text:
            continue
        linked = body.replace("](bench/results/", f"]({os.path.relpath(results_dir, os.path.dirname(page))}/")
        start, end = text.index(start_marker) + len(start_marker), text.index(end_marker)
        with open(f"{page}.tmp", "w") as handle:
            handle.write(text[:start] + "\n" + linked + "\n" + text[end:])
        os.replace(f"{page}.tmp", page)
        written.append(page)
    return written


def _tables_section(all_results) -> str:
    sections = []
    for results in all_results:
        if results["table"] == "tiny":
            continue
        extras = "".join(f"\n\n{extra}" for extra in extra_tables(results))
        sections.append(f"**{TITLES.get(results['table'], results['table'])}** — {results['budget']}\n\n"
                        + markdown_table(results) + extras)
    body = "\n\n".join(sections) or "_No benchmark row has finished yet._"
    if any(r["rows"] for r in all_results if r["table"] != "tiny"):
        body += "\n\n![accuracy against sparsity](bench/results/accuracy_vs_sparsity.png)"
    if any(r["rows"] for r in all_results if r["table"] in COST_TABLES):
        body += "\n\n![accuracy against training cost](bench/results/accuracy_vs_cost.png)"
    return body


def regenerate_all(results_dir: str, docs_root: str):
    """Every generated section of the docs from the JSON: the benchmark tables and plots (regenerate), the speed
    runs' tables (bench/speed.py) and the INT8 methods (bench/ptq.py)."""
    from bench import ptq, speed

    regenerate(results_dir, docs_root)
    for name, body in {**speed.sections(results_dir), **ptq.sections(results_dir)}.items():
        replace_doc_section(docs_root, name, body, results_dir)


if __name__ == "__main__":
    import sys

    bench = os.path.dirname(os.path.abspath(__file__))
    sys.path.insert(0, os.path.dirname(bench))  # bench.fast_anywhere
    regenerate_all(os.path.join(bench, "results"), docs_root=os.path.dirname(bench))
