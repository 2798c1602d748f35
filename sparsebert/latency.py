"""Latency tables: what an encoder layer's attention costs with each number of heads, and its feed-forward block
with each width, timed in the target runtime at one input shape. The structured pruning recipe's speed target is
met against the table (as ZipLM does): a model's estimated time is the rest of the model plus each kept layer's
attention and FFN times.

    python -m sparsebert.latency --model_name_or_path MODEL --output table.json [--batch 1 --seq_len 128]

Build it on (a machine like) the one you deploy on: the table is the runtime's and the CPU's, not the model's.
"""

import argparse
import json
import os
import statistics
import tempfile
import time

import numpy as np
import torch
from torch import nn

from sparsebert.jsonfile import write_json

RUNTIMES = ("onnxruntime",)


class _Attention(nn.Module):
    """Self-attention with `heads` heads of `head_size`, its output projection, residual and LayerNorm."""

    def __init__(self, hidden, heads, head_size):
        super().__init__()
        self.head_size = head_size
        self.qkv = nn.ModuleList(nn.Linear(hidden, heads * head_size) for _ in range(3))
        self.out = nn.Linear(heads * head_size, hidden)
        self.norm = nn.LayerNorm(hidden)

    def forward(self, hidden_states, mask):
        batch, length, _ = hidden_states.shape
        q, k, v = (p(hidden_states).view(batch, length, -1, self.head_size).transpose(1, 2) for p in self.qkv)
        scores = q @ k.transpose(-1, -2) / self.head_size ** 0.5 + mask
        context = (scores.softmax(-1) @ v).transpose(1, 2).reshape(batch, length, -1)
        return self.norm(self.out(context) + hidden_states)


class _FeedForward(nn.Module):
    def __init__(self, hidden, width):
        super().__init__()
        self.up, self.down, self.norm = nn.Linear(hidden, width), nn.Linear(width, hidden), nn.LayerNorm(hidden)

    def forward(self, hidden_states, mask):
        return self.norm(self.down(nn.functional.gelu(self.up(hidden_states))) + hidden_states)


def _time_onnxruntime(module, inputs, folder, repeats):
    import onnxruntime

    path = os.path.join(folder, "block.onnx")
    torch.onnx.export(module.eval(), inputs, path, input_names=["hidden", "mask"], dynamo=False, opset_version=17)
    session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
    given = {"hidden": inputs[0].numpy(), "mask": inputs[1].numpy()}
    feed = {i.name: given[i.name] for i in session.get_inputs()}  # (the FFN block has no use for the mask)
    for _ in range(3):
        session.run(None, feed)
    seconds = []
    for _ in range(repeats):
        started = time.perf_counter()
        session.run(None, feed)
        seconds.append(time.perf_counter() - started)
    return 1000 * statistics.median(seconds)


def build_table(hidden: int, heads: int, head_size: int, neurons: int, layers: int, rest_ms: float,
                batch: int = 1, seq_len: int = 128, runtime: str = "onnxruntime", repeats: int = 30,
                neuron_levels: int = 24) -> dict:
    """Time one layer's attention at 1..heads heads and its FFN at `neuron_levels` widths up to `neurons`."""
    if runtime not in RUNTIMES:
        raise ValueError(f"runtime {runtime!r}: tables are built for {', '.join(RUNTIMES)}")
    torch.manual_seed(0)
    inputs = (torch.randn(batch, seq_len, hidden), torch.zeros(batch, 1, 1, seq_len))
    widths = sorted({max(1, round(neurons * level / neuron_levels)) for level in range(1, neuron_levels + 1)})
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        attention = {h: _time_onnxruntime(_Attention(hidden, h, head_size), inputs, folder, repeats)
                     for h in range(1, heads + 1)}
        ffn = {n: _time_onnxruntime(_FeedForward(hidden, n), inputs, folder, repeats) for n in widths}
    return {"runtime": runtime, "batch": batch, "seq_len": seq_len, "hidden": hidden, "head_size": head_size,
            "heads": heads, "neurons": neurons, "layers": layers, "rest_ms": rest_ms,
            "attention_ms": {str(h): round(ms, 4) for h, ms in attention.items()},
            "ffn_ms": {str(n): round(ms, 4) for n, ms in ffn.items()}}


def _isotonic(values) -> np.ndarray:
    """The closest non-decreasing sequence (least squares; pool adjacent violators): a timing's noise neither
    makes a wider block look cheaper nor, as a running maximum would, lifts every wider block to one outlier."""
    blocks = []  # [mean, count]
    for value in values:
        blocks.append([float(value), 1])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            (mean_b, count_b), (mean_a, count_a) = blocks.pop(), blocks.pop()
            blocks.append([(mean_a * count_a + mean_b * count_b) / (count_a + count_b), count_a + count_b])
    return np.concatenate([[mean] * count for mean, count in blocks])


class LatencyTable:
    """A table's estimates: times never fall as a block widens (the timings' noise is taken out), a removed layer
    costs nothing, and widths between the timed ones are interpolated."""

    def __init__(self, table: dict, source: str = "the latency table"):
        self.table, self.source = table, source
        self.attention = self._monotone(table["attention_ms"])
        self.ffn = self._monotone(table["ffn_ms"])

    @classmethod
    def load(cls, path: str) -> "LatencyTable":
        with open(path) as handle:
            return cls(json.load(handle), path)

    @staticmethod
    def _monotone(times: dict) -> tuple[np.ndarray, np.ndarray]:
        widths = np.array(sorted(int(w) for w in times))
        values = _isotonic([times[str(w)] for w in widths])
        return np.concatenate([[0], widths]), np.concatenate([[0.0], values])

    def attention_ms(self, heads: float) -> float:
        return float(np.interp(heads, *self.attention))

    def ffn_ms(self, neurons: float) -> float:
        return float(np.interp(neurons, *self.ffn))

    def estimate_ms(self, widths: list[tuple[int, int]]) -> float:
        """Estimated time of a model whose layers keep these (heads, neurons); (0, 0) is a removed layer."""
        return self.table["rest_ms"] + sum(self.attention_ms(h) + self.ffn_ms(n) for h, n in widths if h or n)

    @property
    def dense_ms(self) -> float:
        return self.estimate_ms([(self.table["heads"], self.table["neurons"])] * self.table["layers"])

    @property
    def max_speedup(self) -> float:
        """Every layer removed: the rest of the model alone (embeddings and the task head)."""
        return self.dense_ms / self.table["rest_ms"]

    def check_fits(self, hidden: int, heads: int, head_size: int, neurons: int, layers: int):
        """The table must describe this model's shapes; raises ValueError naming the first that differs."""
        expected = {"hidden": hidden, "heads": heads, "head_size": head_size, "neurons": neurons, "layers": layers}
        for key, value in expected.items():
            if self.table[key] != value:
                raise ValueError(f"{self.source} was built for {key} {self.table[key]}, this model has {value}")


def time_model_ms(model, batch: int, seq_len: int, repeats: int = 30) -> float:
    """The whole model's time in onnxruntime at this shape (inputs: token ids and attention mask)."""
    import onnxruntime

    class Forward(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask):
            return tuple(v for v in self.inner(input_ids=input_ids, attention_mask=attention_mask).values())

    ids = torch.randint(5, model.config.vocab_size, (batch, seq_len))
    mask = torch.ones_like(ids)
    with tempfile.TemporaryDirectory() as folder, torch.no_grad():
        path = os.path.join(folder, "model.onnx")
        torch.onnx.export(Forward(model.eval()), (ids, mask), path, input_names=["input_ids", "attention_mask"],
                          dynamo=False, opset_version=17)
        session = onnxruntime.InferenceSession(path, providers=["CPUExecutionProvider"])
        feed = {"input_ids": ids.numpy(), "attention_mask": mask.numpy()}
        for _ in range(3):
            session.run(None, feed)
        seconds = []
        for _ in range(repeats):
            started = time.perf_counter()
            session.run(None, feed)
            seconds.append(time.perf_counter() - started)
    return 1000 * statistics.median(seconds)


def table_for_model(model, batch: int = 1, seq_len: int = 128, repeats: int = 30, neuron_levels: int = 24) -> dict:
    """The table for this model's shapes: its blocks timed one by one, and the rest of the model as the whole
    model's time less its layers' estimate."""
    from sparsebert.structure import layer_units

    units = layer_units(model)
    first = units[0]
    hidden = first.query.in_features
    table = build_table(hidden, first.num_heads, first.head_size, first.num_neurons, len(units), rest_ms=0.0,
                        batch=batch, seq_len=seq_len, repeats=repeats, neuron_levels=neuron_levels)
    whole = time_model_ms(model, batch, seq_len, repeats)
    layers = LatencyTable(table).dense_ms
    table["model_ms"] = round(whole, 4)
    table["rest_ms"] = round(max(whole - layers, 0.02 * whole), 4)  # at least 2%: timing noise can exceed it
    return table


def main():
    from transformers import AutoModel

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model_name_or_path", required=True)
    parser.add_argument("--output", required=True, help="the table's JSON file")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--repeats", type=int, default=30)
    args = parser.parse_args()
    model = AutoModel.from_pretrained(args.model_name_or_path)
    table = table_for_model(model, args.batch, args.seq_len, args.repeats)
    write_json(args.output, table)
    estimate = LatencyTable(table)
    print(f"{args.output}: dense {estimate.dense_ms:.2f} ms at {args.batch}x{args.seq_len} in onnxruntime "
          f"(whole model timed {table['model_ms']:.2f} ms); reachable speed-up up to {estimate.max_speedup:.1f}x")


if __name__ == "__main__":
    main()
