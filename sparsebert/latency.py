"""Latency tables: what an encoder layer's attention costs with each number of heads, and its feed-forward block
with each width, timed in the target runtime at one input shape (whole models, every layer cut alike). The
structured pruning recipe's speed target is met against the table (as ZipLM does): a model's estimated time is the
rest of the model plus each kept layer's attention and FFN times.

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
        """Estimated time of a model whose layers keep these (heads, neurons); a layer missing from the list, or
        (0, 0), is a removed one."""
        return self.table["rest_ms"] + sum(self.attention_ms(h) + self.ffn_ms(n) for h, n in widths if h or n)

    def estimated_speedup(self, widths: list[tuple[int, int]]) -> float:
        return self.dense_ms / self.estimate_ms(widths)

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


class _Outputs(nn.Module):
    """A transformers model as a module of two tensors in, a tuple out: what the exporter takes."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, input_ids, attention_mask):
        return tuple(self.model(input_ids=input_ids, attention_mask=attention_mask).values())


def _session(module, inputs: dict, folder: str):
    """The module exported to ONNX in folder, as an onnxruntime session with the inputs its graph kept."""
    import onnxruntime

    path = os.path.join(folder, f"{len(os.listdir(folder))}.onnx")
    with torch.no_grad():
        torch.onnx.export(module.eval(), tuple(inputs.values()), path, input_names=list(inputs), dynamo=False,
                          opset_version=17)
    options = onnxruntime.SessionOptions()
    # many sessions take turns here: threads left spinning after a run would slow the next session's
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = onnxruntime.InferenceSession(path, options, providers=["CPUExecutionProvider"])
    # (an FFN block, or a model without layers, has no use for the mask: the graph drops it)
    return session, {i.name: inputs[i.name].numpy() for i in session.get_inputs()}


def time_ms(modules: dict, rounds: int = 10, repeats: int = 5) -> dict:
    """name -> (module, inputs by name) in; name -> median ms in onnxruntime out, timed in interleaved rounds
    so that a noisy machine's drifts hit all of them alike."""
    with tempfile.TemporaryDirectory() as folder:
        sessions = {name: _session(module, inputs, folder) for name, (module, inputs) in modules.items()}
        seconds = {name: [] for name in sessions}
        for session, feed in sessions.values():
            session.run(None, feed)
        for _ in range(rounds):
            for name, (session, feed) in sessions.items():
                started = time.perf_counter()
                for _ in range(repeats):
                    session.run(None, feed)
                seconds[name].append((time.perf_counter() - started) / repeats)
    return {name: 1000 * statistics.median(values) for name, values in seconds.items()}


def _uniform_cut(model, heads: int, neurons: int):
    """A copy of the model with every layer cut to its first `heads` heads and `neurons` neurons (0, 0: none)."""
    import copy

    from sparsebert.structure import compact, layer_units

    cut = copy.deepcopy(model)
    units = layer_units(cut)
    head_masks = [torch.arange(u.num_heads) < heads for u in units]
    neuron_masks = [torch.arange(u.num_neurons) < neurons for u in units]
    return compact(cut, head_masks, neuron_masks)


def table_for_model(model, batch: int = 1, seq_len: int = 128, repeats: int = 30, neuron_levels: int = 24) -> dict:
    """The table for this model's shapes, from whole models timed in onnxruntime: the model with no layer (the
    rest), and with every layer cut to each head count (full FFN) and to each FFN width (all heads); a layer's
    cost per width is the time above the rest, per layer. How a full layer splits between attention and FFN comes
    from the two blocks timed alone (isolated blocks miss what the whole graph shares, so they set only that
    split)."""
    from sparsebert.structure import layer_units

    units = layer_units(model)
    first = units[0]
    hidden, heads, size, neurons, layers = (first.query.in_features, first.num_heads, first.head_size,
                                            first.num_neurons, len(units))
    torch.manual_seed(0)
    block_inputs = {"hidden": torch.randn(batch, seq_len, hidden), "mask": torch.zeros(batch, 1, 1, seq_len)}
    ids = torch.randint(5, model.config.vocab_size, (batch, seq_len))
    model_inputs = {"input_ids": ids, "attention_mask": torch.ones_like(ids)}
    widths = sorted({max(1, round(neurons * level / neuron_levels)) for level in range(1, neuron_levels + 1)})
    cuts = [(0, 0), (heads, neurons)] + [(h, neurons) for h in range(1, heads)] + \
        [(heads, n) for n in widths if n != neurons]
    timed = time_ms({"attention block": (_Attention(hidden, heads, size), block_inputs),
                     "ffn block": (_FeedForward(hidden, neurons), block_inputs),
                     **{cut: (_Outputs(_uniform_cut(model, *cut)), model_inputs) for cut in cuts}},
                    rounds=max(3, repeats // 3))
    attention_share = timed["attention block"] / (timed["attention block"] + timed["ffn block"])
    rest = timed[0, 0]
    per_layer = {cut: max(timed[cut] - rest, 0.0) / layers for cut in cuts}
    full = per_layer[heads, neurons]
    attention_full, ffn_full = attention_share * full, (1 - attention_share) * full
    floor = 1e-3 * full  # a width can never cost nothing: noise must not make it free
    attention = {h: max(per_layer[h, neurons] - ffn_full, floor) for h in range(1, heads + 1)}
    ffn = {n: max(per_layer[heads, n] - attention_full, floor) for n in widths}
    return {"runtime": "onnxruntime", "batch": batch, "seq_len": seq_len, "hidden": hidden, "head_size": size,
            "heads": heads, "neurons": neurons, "layers": layers, "rest_ms": round(rest, 4),
            "model_ms": round(rest + layers * full, 4),
            "attention_ms": {str(h): round(ms, 4) for h, ms in attention.items()},
            "ffn_ms": {str(n): round(ms, 4) for n, ms in ffn.items()}}


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
          f"(the whole dense model timed); reachable speed-up up to {estimate.max_speedup:.1f}x")


if __name__ == "__main__":
    main()
