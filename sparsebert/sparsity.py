"""How sparse a model is: per parameter, and over the parameters a recipe prunes."""

import torch


def zero_fraction(tensors) -> float:
    zeros = total = 0
    for tensor in tensors:
        zeros += int((tensor == 0).sum())
        total += tensor.numel()
    return zeros / total if total else 0.0


@torch.no_grad()
def sparsity_report(model, targeted_names=()) -> dict:
    """Every weight matrix (2-D or more) with its share of zeros; `targeted` marks those the recipe prunes."""
    targeted_names = set(targeted_names)
    rows = []
    for name, param in model.named_parameters():
        if param.dim() < 2 and name not in targeted_names:
            continue
        zeros = int((param == 0).sum())
        rows.append({"name": name, "shape": list(param.shape), "numel": param.numel(), "zeros": zeros,
                     "sparsity": zeros / param.numel(), "targeted": name in targeted_names})
    targeted = [r for r in rows if r["targeted"]]
    total_params = sum(p.numel() for p in model.parameters())
    total_zeros = sum(int((p == 0).sum()) for p in model.parameters())
    return {
        "targeted_sparsity": sum(r["zeros"] for r in targeted) / max(1, sum(r["numel"] for r in targeted)),
        "targeted_parameters": sum(r["numel"] for r in targeted),
        "model_sparsity": total_zeros / total_params,
        "model_parameters": total_params,
        "parameters": rows,
    }


def format_sparsity_table(report: dict) -> str:
    """A readable table of the pruned parameters (or of all weight matrices when nothing was targeted)."""
    rows = [r for r in report["parameters"] if r["targeted"]] or report["parameters"]
    width = max(len(r["name"]) for r in rows)
    lines = [f"{'parameter':<{width}}  {'shape':>12}  {'sparsity':>8}", "-" * (width + 24)]
    for r in rows:
        shape = "x".join(map(str, r["shape"]))
        lines.append(f"{r['name']:<{width}}  {shape:>12}  {100 * r['sparsity']:7.2f}%")
    lines.append("-" * (width + 24))
    lines.append(f"pruned parameters: {report['targeted_parameters']:,} at {100 * report['targeted_sparsity']:.2f}% "
                 f"sparsity; whole model: {report['model_parameters']:,} at {100 * report['model_sparsity']:.2f}%")
    return "\n".join(lines)
