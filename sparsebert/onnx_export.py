"""ONNX export for sparse-aware runtimes, checked against PyTorch right after it is written."""

import logging
import os
import warnings

import numpy as np
import torch

from sparsebert.families import MODEL_INPUTS, input_names
from sparsebert.jsonfile import write_json

logger = logging.getLogger(__name__)

PARITY_TOLERANCE = 1e-4  # FP32: largest absolute logit difference, onnxruntime vs PyTorch
# INT8 (a quantization-aware model exported with integer ops, against its fake-quantized PyTorch self): float
# arithmetic in another order puts a few values on the other side of a rounding boundary, a whole quantization
# step away, and the layers after pass that on; a single logit may move by 15% of the largest on a sentence in a
# hundred (measured on SST-2, for the QuantizeLinear/DequantizeLinear graph too). So the rule is on the answers
# and on the average: the same prediction (argmax) for at least 99% of them, and the logits off by at most 1% of
# the largest logit on average (a departure of the graph from the model shows as 3-7%). Some models are more
# sensitive than that to rounding: a SQuAD MiniLM moves 1.5-3% of its answer positions when nothing but float32
# rounding changes (quantization.nudge_rounding). So both bounds count from what the model gives against itself,
# nudged so (int8_rule): for a model that rounding does not move, they are 99% and 1%.
INT8_AGREEMENT, INT8_MEAN_RELATIVE_TOLERANCE = 0.99, 0.01


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in (those the tokenizer gives, in file order), the named logits out: what the exporter
    traces."""

    def __init__(self, model, input_names, output_names):
        super().__init__()
        self.model = model
        self.input_names = list(input_names)
        self.output_names = output_names

    def forward(self, *inputs):
        outputs = self.model(**dict(zip(self.input_names, inputs)))
        return tuple(outputs[name] for name in self.output_names)


def make_batch(tokenizer, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """Random token ids with a padded tail on every row but the first, as a real padded batch has; the inputs
    the tokenizer gives (a second segment in token_type_ids where it has them)."""
    generator = torch.Generator().manual_seed(seed)
    special = set(tokenizer.all_special_ids)
    ordinary = torch.tensor([i for i in range(len(tokenizer)) if i not in special])
    input_ids = ordinary[torch.randint(len(ordinary), (batch_size, seq_len), generator=generator)]
    input_ids[:, 0] = tokenizer.cls_token_id
    attention_mask = torch.ones(batch_size, seq_len, dtype=torch.long)
    token_type_ids = torch.zeros(batch_size, seq_len, dtype=torch.long)
    token_type_ids[:, seq_len // 2:] = 1
    for row in range(1, batch_size):
        length = max(2, seq_len - row * seq_len // (2 * batch_size))
        attention_mask[row, length:] = 0
        input_ids[row, length:] = tokenizer.pad_token_id
    batch = {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}
    return {name: batch[name] for name in input_names(tokenizer)}


def batch_from_features(features, batch_size: int = 100) -> dict:
    """The first rows of a tokenized dataset, padded to their longest, as model inputs: 100, so that the INT8 rule
    (the same prediction for 99% of them) tolerates one answer near a decision boundary, and no more."""
    rows = features.select(range(min(batch_size, len(features))))
    longest = max(len(ids) for ids in rows["input_ids"])
    return {name: torch.tensor([list(v) + [0] * (longest - len(v)) for v in rows[name]], dtype=torch.long)
            for name in MODEL_INPUTS if name in rows.column_names}


def export_onnx(model, tokenizer, export_dir: str, output_names, verify_batch: dict | None = None,
                opset: int = 14) -> dict:
    """Write export_dir/model.onnx (plus config and tokenizer, which deployment runtimes read beside it), then
    run it in onnxruntime on a batch of another shape than the traced one and compare with PyTorch. The model is
    traced on the CPU in eval mode and handed back on its device, in its mode.

    A quantization-aware model is exported through sparseml, which turns its fake-quantized layers into integer
    operations (MatMulInteger; opset 13 at least, as sparseml needs for that), then rewritten where sparseml's
    conversion departs from the model (sparsebert/int8_graph.py)."""
    parameter = next(model.parameters(), None)
    device, training = (parameter.device if parameter is not None else None), model.training
    # SDPA attention exports as a graph that onnxruntime runs 1.35x slower than eager attention's (the same
    # numbers; measured on MiniLM at 16 x 384): export the eager one
    from sparsebert.seams import attention_implementation

    attention = attention_implementation(model)
    if attention == "sdpa":
        model.set_attn_implementation("eager")
    try:
        return _export_and_verify(model.to("cpu").eval(), tokenizer, export_dir, output_names, verify_batch, opset)
    finally:
        model.train(training)
        if device is not None:
            model.to(device)
        if attention == "sdpa":
            model.set_attn_implementation(attention)


@torch.no_grad()
def _export_and_verify(model, tokenizer, export_dir: str, output_names, verify_batch: dict | None,
                       opset: int) -> dict:
    import onnx
    import onnxruntime
    from sparseml.pytorch.utils import export_onnx as sparseml_export_onnx

    from sparsebert.int8_graph import match_fake_quantized_model
    from sparsebert.integer_products import saturating_products
    from sparsebert.quantization import is_quantized

    os.makedirs(export_dir, exist_ok=True)
    # eval(): a new Module starts in train mode, and the exporter restores that mode (dropout on) afterwards
    names = input_names(tokenizer, model)
    wrapped = _LogitsOnly(model, names, list(output_names)).eval()
    # a padded row makes the tracer keep the attention-mask path (an all-ones mask can be optimized away)
    sample = make_batch(tokenizer, batch_size=2, seq_len=8)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in names}
    dynamic_axes.update(_output_axes(wrapped, tokenizer, output_names))

    target = os.path.join(export_dir, "model.onnx")
    tmp = os.path.join(export_dir, "model.onnx.tmp")
    quantized = is_quantized(model)
    with warnings.catch_warnings():  # the tracer's notes on Python-side shape arithmetic: checked below instead
        warnings.simplefilter("ignore")
        arguments = tuple(sample[n] for n in names)
        io_names = {"input_names": names, "output_names": list(output_names), "dynamo": False}
        if quantized:
            sparseml_export_onnx(wrapped, arguments, tmp, opset=max(opset, 13), convert_qat=True,
                                 dynamic_axes=dynamic_axes, **io_names)
        else:
            torch.onnx.export(wrapped, arguments, tmp, dynamic_axes=dynamic_axes, opset_version=opset,
                              do_constant_folding=True, **io_names)
    int8_rewrites = match_fake_quantized_model(tmp, wrapped) if quantized else None
    os.replace(tmp, target)
    model.config.save_pretrained(export_dir)
    tokenizer.save_pretrained(export_dir)

    if verify_batch is None or tuple(verify_batch["input_ids"].shape) == tuple(sample["input_ids"].shape):
        verify_batch = make_batch(tokenizer, batch_size=3, seq_len=min(32, model.config.max_position_embeddings))
    session = onnxruntime.InferenceSession(target, providers=["CPUExecutionProvider"])
    onnx_outputs = session.run(list(output_names), {n: verify_batch[n].numpy() for n in names})
    inputs = [verify_batch[n] for n in names]
    torch_outputs = [out.numpy() for out in wrapped(*inputs)]
    mask = verify_batch["attention_mask"].numpy().astype(bool)
    compared = compare_outputs(onnx_outputs, torch_outputs, mask)
    if quantized:
        floor = _own_rounding_floor(wrapped, inputs, torch_outputs, mask)
        parity_ok, rule, tolerance = int8_rule(compared, floor)
        saturating = saturating_products(onnx.load(target))
        if saturating:  # right on this CPU maybe, wrong on one without VNNI
            parity_ok = False
            rule += (f"; and exact on every x86 CPU, which {len(saturating)} integer products are not (uint8 x int8: "
                     f"their 16-bit pair sums saturate without AVX-512 VNNI)")
    else:
        parity_ok = compared["max_abs_diff"] < PARITY_TOLERANCE
        rule, tolerance = f"FP32: logits within {PARITY_TOLERANCE:g}", PARITY_TOLERANCE
    max_diff, mean_diff, agreement = compared["max_abs_diff"], compared["mean_abs_diff"], compared["agreement"]
    report = {
        "onnx_path": target,
        "precision": "int8" if quantized else "fp32",
        "export_shape": list(sample["input_ids"].shape),
        "verify_shape": list(verify_batch["input_ids"].shape),
        "max_abs_diff": max_diff,
        "mean_abs_diff": mean_diff,
        "largest_abs_output": compared["largest"],
        "prediction_agreement": agreement,
        "rule": rule,
        "tolerance": tolerance,
        "parity_ok": parity_ok,
        "integer_ops": onnx_integer_ops(target),
        "initializer_sparsity": onnx_initializer_sparsity(target),
    }
    if quantized:
        report["saturating_products_without_vnni"] = saturating
        report["own_rounding_floor"] = {"prediction_agreement": floor["agreement"],
                                        "mean_abs_diff": floor["mean_abs_diff"]}
        report["int8_graph_rewrites"] = int8_rewrites
    write_json(os.path.join(export_dir, "onnx_parity.json"), report)
    log = logger.info if report["parity_ok"] else logger.error
    log(f"ONNX model written to {target} ({report['precision']}); onnxruntime vs PyTorch on a "
        f"{report['verify_shape']} batch: max abs diff {max_diff:.2e} (mean {mean_diff:.2e}), same prediction "
        f"{agreement:.0%} ({'passes' if parity_ok else 'FAILS'} {rule})")
    return report


def _own_rounding_floor(wrapped, inputs, outputs, mask) -> dict:
    """The fake-quantized model against itself nudged by float32 rounding (quantization.nudge_rounding)."""
    from sparsebert.quantization import nudge_rounding

    handles = nudge_rounding(wrapped)
    try:
        return compare_outputs([out.numpy() for out in wrapped(*inputs)], outputs, mask)
    finally:
        for handle in handles:
            handle.remove()


def compare_outputs(outputs, reference, mask) -> dict:
    """How far one run's outputs are from another's, on the unmasked positions: largest and mean absolute
    difference, the reference's largest absolute value, and the share of the same predictions (the answer position:
    argmax over the unpadded positions; the class of each example or token: argmax over the last axis)."""
    max_diff = largest = total_diff = 0.0
    agree = total = compared = 0
    for output, expected in zip(outputs, reference):
        per_token = expected.shape[:2] == mask.shape  # (batch, sequence, ...): padded positions mean nothing
        kept = (lambda values: values[mask]) if per_token else (lambda values: values)
        difference = np.abs(kept(output) - kept(expected))
        max_diff = max(max_diff, float(difference.max()))
        total_diff, compared = total_diff + float(difference.sum()), compared + difference.size
        largest = max(largest, float(np.abs(kept(expected)).max()))
        if per_token and expected.ndim == 2:
            output, expected = np.where(mask, output, -np.inf), np.where(mask, expected, -np.inf)
        if expected.shape[-1] > 1:
            same = output.argmax(-1) == expected.argmax(-1)
            same = same[mask] if per_token and expected.ndim == 3 else same
            agree, total = agree + int(same.sum()), total + same.size
    return {"max_abs_diff": max_diff, "mean_abs_diff": total_diff / compared, "largest": largest,
            "agreement": agree / total if total else 1.0}


def int8_rule(compared: dict, floor: dict) -> tuple[bool, str, float]:
    """(passes, the rule in words, the mean-difference tolerance) for an INT8 export: onnxruntime against PyTorch
    (`compared`), judged against the PyTorch model against itself nudged by float32 rounding (`floor`). It may
    change at most 1 point more of the predictions than the nudge does, and depart on average by at most 1% of the
    largest logit more than the nudge does: for a model that rounding does not move, 99% and 1%."""
    needed = floor["agreement"] - (1 - INT8_AGREEMENT)
    tolerance = INT8_MEAN_RELATIVE_TOLERANCE * compared["largest"] + floor["mean_abs_diff"]
    passes = compared["agreement"] >= needed and compared["mean_abs_diff"] <= tolerance
    rule = (f"INT8: same prediction for >= {needed:.1%} (1 point under the {floor['agreement']:.1%} of the model "
            f"against itself nudged by float32 rounding), logits within {tolerance:.3g} on average (1% of the "
            f"largest, {compared['largest']:.3g}, more than the nudged model's {floor['mean_abs_diff']:.3g})")
    return passes, rule, tolerance


def _output_axes(wrapped, tokenizer, output_names) -> dict:
    """Each output's axes that follow the batch size and the sequence length, found by running two shapes
    (QA logits per token, token-classification logits per token and class, a classifier's per example)."""
    shapes = []
    with torch.no_grad():
        for batch_size, seq_len in ((2, 8), (3, 9)):
            batch = make_batch(tokenizer, batch_size, seq_len)
            shapes.append([tuple(out.shape) for out in wrapped(*batch.values())])
    axes = {}
    for name, first, second in zip(output_names, *shapes):
        named = {(2, 3): "batch", (8, 9): "sequence"}
        axes[name] = {dim: named[sizes] for dim, sizes in enumerate(zip(first, second)) if sizes in named}
    return axes


def onnx_integer_ops(path: str) -> dict:
    """How many integer operations the file holds, by type (an INT8 export has MatMulInteger and the like)."""
    import onnx

    counts = {}
    for node in onnx.load(path).graph.node:
        if "Integer" in node.op_type or node.op_type.startswith("QLinear"):
            counts[node.op_type] = counts.get(node.op_type, 0) + 1
    return counts


def onnx_initializer_sparsity(path: str, min_size: int = 1024) -> float:
    """Share of zeros over the file's weight matrices (initializers of at least min_size values). An integer
    weight of MatMulInteger counts its zero point as zero (a weight equal to its zero point is a zero)."""
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(path).graph
    values = {init.name: numpy_helper.to_array(init) for init in graph.initializer}
    zero_points = {node.input[1]: values.get(node.input[3]) for node in graph.node
                   if node.op_type == "MatMulInteger" and len(node.input) > 3}
    zeros = total = 0
    for name, array in values.items():
        if array.ndim >= 2 and array.size >= min_size:
            zero = zero_points.get(name)
            zeros += int((array == (zero if zero is not None else 0)).sum())
            total += array.size
    return zeros / total if total else 0.0
