"""ONNX export for sparse-aware runtimes, checked against PyTorch right after it is written."""

import logging
import os
import warnings

import numpy as np
import torch

from sparsebert.cli import write_json

logger = logging.getLogger(__name__)

INPUT_NAMES = ("input_ids", "attention_mask", "token_type_ids")
PARITY_TOLERANCE = 1e-4


class _LogitsOnly(torch.nn.Module):
    """Positional inputs in, the named logits out: what the exporter traces."""

    def __init__(self, model, output_names):
        super().__init__()
        self.model = model
        self.output_names = output_names

    def forward(self, input_ids, attention_mask, token_type_ids):
        outputs = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
        return tuple(outputs[name] for name in self.output_names)


def make_batch(tokenizer, batch_size: int, seq_len: int, seed: int = 0) -> dict:
    """Random token ids with a padded tail on every row but the first, as a real padded batch has."""
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
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


def batch_from_features(features, batch_size: int = 4) -> dict:
    """The first rows of a tokenized dataset, padded to their longest, as model inputs."""
    rows = features.select(range(min(batch_size, len(features))))
    longest = max(len(ids) for ids in rows["input_ids"])
    batch = {}
    for name in INPUT_NAMES:
        values = rows[name] if name in rows.column_names else [[0] * len(ids) for ids in rows["input_ids"]]
        batch[name] = torch.tensor([list(v) + [0] * (longest - len(v)) for v in values], dtype=torch.long)
    return batch


@torch.no_grad()
def export_onnx(model, tokenizer, export_dir: str, output_names, verify_batch: dict | None = None,
                opset: int = 14) -> dict:
    """Write export_dir/model.onnx (plus config and tokenizer, which deployment runtimes read beside it), then
    run it in onnxruntime on a batch of another shape than the traced one and compare with PyTorch."""
    import onnxruntime

    os.makedirs(export_dir, exist_ok=True)
    model = model.to("cpu").eval()
    # eval(): a new Module starts in train mode, and the exporter restores that mode (dropout on) afterwards
    wrapped = _LogitsOnly(model, list(output_names)).eval()
    # a padded row makes the tracer keep the attention-mask path (an all-ones mask can be optimized away)
    sample = make_batch(tokenizer, batch_size=2, seq_len=8)
    dynamic_axes = {name: {0: "batch", 1: "sequence"} for name in INPUT_NAMES}
    for name in output_names:
        per_token = name in ("start_logits", "end_logits")
        dynamic_axes[name] = {0: "batch", 1: "sequence"} if per_token else {0: "batch"}

    target = os.path.join(export_dir, "model.onnx")
    tmp = os.path.join(export_dir, "model.onnx.tmp")
    with warnings.catch_warnings():  # the tracer's notes on Python-side shape arithmetic: checked below instead
        warnings.simplefilter("ignore")
        torch.onnx.export(wrapped, tuple(sample[n] for n in INPUT_NAMES), tmp, input_names=list(INPUT_NAMES),
                          output_names=list(output_names), dynamic_axes=dynamic_axes, opset_version=opset,
                          do_constant_folding=True, dynamo=False)
    os.replace(tmp, target)
    model.config.save_pretrained(export_dir)
    tokenizer.save_pretrained(export_dir)

    if verify_batch is None or tuple(verify_batch["input_ids"].shape) == tuple(sample["input_ids"].shape):
        verify_batch = make_batch(tokenizer, batch_size=3, seq_len=min(32, model.config.max_position_embeddings))
    session = onnxruntime.InferenceSession(target, providers=["CPUExecutionProvider"])
    onnx_outputs = session.run(list(output_names), {n: verify_batch[n].numpy() for n in INPUT_NAMES})
    torch_outputs = wrapped(*(verify_batch[n] for n in INPUT_NAMES))
    mask = verify_batch["attention_mask"].numpy().astype(bool)
    max_diff = 0.0
    for ort_out, torch_out in zip(onnx_outputs, torch_outputs):
        diff = np.abs(ort_out - torch_out.numpy())
        if diff.ndim == 2 and diff.shape == mask.shape:  # per-token logits: padded positions mean nothing
            diff = diff[mask]
        max_diff = max(max_diff, float(diff.max()))

    report = {
        "onnx_path": target,
        "export_shape": list(sample["input_ids"].shape),
        "verify_shape": list(verify_batch["input_ids"].shape),
        "max_abs_diff": max_diff,
        "tolerance": PARITY_TOLERANCE,
        "parity_ok": max_diff < PARITY_TOLERANCE,
        "initializer_sparsity": onnx_initializer_sparsity(target),
    }
    write_json(os.path.join(export_dir, "onnx_parity.json"), report)
    log = logger.info if report["parity_ok"] else logger.error
    log(f"ONNX model written to {target}; onnxruntime vs PyTorch on a {report['verify_shape']} batch: "
        f"max abs diff {max_diff:.2e} ({'within' if report['parity_ok'] else 'OVER'} {PARITY_TOLERANCE:g})")
    return report


def onnx_initializer_sparsity(path: str, min_size: int = 1024) -> float:
    """Share of zeros over the file's weight matrices (initializers of at least min_size values)."""
    import onnx
    from onnx import numpy_helper

    zeros = total = 0
    for initializer in onnx.load(path).graph.initializer:
        values = numpy_helper.to_array(initializer)
        if values.ndim >= 2 and values.size >= min_size:
            zeros += int((values == 0).sum())
            total += values.size
    return zeros / total if total else 0.0
