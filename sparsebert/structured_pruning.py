"""Structured pruning: whole attention heads and FFN neurons removed on a gradual schedule, ranked globally across
layers, to a share kept or to a speed target in a latency table (sparsebert/latency.py). Our own sparseml modifier,
`!StructuredPruningModifier`: sparseml 1.8 prunes single weights or blocks, not heads and neurons.

    !StructuredPruningModifier
        start_epoch: 0.0
        end_epoch: 3.0              # the units go gradually (cubic, as GMP) until here; masks fixed after
        update_frequency: 0.5
        heads_kept: 0.5             # a share of all heads and of all neurons, the same rank across layers...
        neurons_kept: 0.5
        # speedup: 3.0              # ...or a speed-up over the dense model in this latency table
        # latency_table: table.json
        score: fisher               # magnitude | taylor | fisher
        num_grads: 64               # gradient samples per update (taylor, fisher)
        grad_sampler_kwargs: {batch_size: 16}

Scores, each a unit's importance as a loss change, so that heads and neurons rank on one scale:
- magnitude: the sum of squares of the unit's weights (no data);
- taylor (first order): the mean absolute gradient of the loss with respect to a gate on the unit's output,
  |sum of w * dL/dw over its output-projection weights|, over sampled batches (Michel et al., 2019);
- fisher (second order): half the mean square of that gradient, the empirical Fisher's diagonal for the gate:
  the loss rise a second-order expansion predicts when the unit goes (Kwon et al., 2022).
Gradients are sampled as OBS samples them (sparseml's GradSampler, the same grad_sampler the training loop hands
OBS), in eval mode.

With a speed target, units go greedily by lowest score per millisecond saved in the table (a layer's last head or
last neuron only with the whole layer); with shares, by lowest score within their kind. A kept layer keeps at least
one head and one neuron; a layer left with neither is removed at the end. Units once removed stay removed; the
model keeps their zeros (masks applied after every optimizer step) until the trainer compacts it at the end.
"""

import logging
import math
import os

import torch
from sparseml.pytorch.utils import GradSampler

from sparsebert.latency import LatencyTable
from sparsebert.seams import ModifierProp, PyTorchModifierYAML, ScheduledUpdateModifier
from sparsebert.structure import apply_masks, layer_units, masks_from_zeros

logger = logging.getLogger(__name__)

SCORES = ("magnitude", "taylor", "fisher")


# ---- scores --------------------------------------------------------------------------------------------------

@torch.no_grad()
def magnitude_scores(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    heads, neurons = [], []
    for units in layer_units(model):
        rows = sum(linear.weight.pow(2).sum(1) + linear.bias.pow(2) for linear in (units.query, units.key,
                                                                                   units.value))
        rows = rows + units.attention_out.weight.pow(2).sum(0)
        heads.append(rows.view(units.num_heads, units.head_size).sum(1).float().cpu())
        neurons.append((units.ffn_in.weight.pow(2).sum(1) + units.ffn_in.bias.pow(2)
                        + units.ffn_out.weight.pow(2).sum(0)).float().cpu())
    return heads, neurons


@torch.no_grad()
def gate_gradients(model) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """dL/d(gate) of every head and neuron from the gradients in .grad: sum of w * dL/dw over the unit's columns
    of the projection that reads it."""
    heads, neurons = [], []
    for units in layer_units(model):
        out = units.attention_out
        per_column = (out.weight * out.weight.grad).sum(0)
        heads.append(per_column.view(units.num_heads, units.head_size).sum(1).float().cpu())
        neurons.append((units.ffn_out.weight * units.ffn_out.weight.grad).sum(0).float().cpu())
    return heads, neurons


def gradient_scores(model, grad_sampler: GradSampler, num_grads: int, kind: str):
    """taylor: mean |gate gradient|; fisher: half the mean squared gate gradient; over num_grads sampled batches."""
    was_training = model.training
    model.eval()  # as OBS samples: no dropout in the scores
    head_sums = neuron_sums = None
    count = 0
    for _ in grad_sampler.iter_module_backwards(model, num_grads, progress_bar=False):
        heads, neurons = gate_gradients(model)
        transform = torch.abs if kind == "taylor" else (lambda g: 0.5 * g.pow(2))
        heads, neurons = [transform(h) for h in heads], [transform(n) for n in neurons]
        head_sums = heads if head_sums is None else [a + b for a, b in zip(head_sums, heads)]
        neuron_sums = neurons if neuron_sums is None else [a + b for a, b in zip(neuron_sums, neurons)]
        count += 1
    model.train(was_training)
    return [h / count for h in head_sums], [n / count for n in neuron_sums]


# ---- selection -----------------------------------------------------------------------------------------------

def _best_alive(scores, alive) -> int:
    return int(torch.where(alive, scores, torch.tensor(-math.inf)).argmax())


def _keep_one_of_each(head_masks, neuron_masks, head_scores, neuron_scores, alive_heads, alive_neurons):
    """A layer keeping units of one kind only gets back its best unit of the other still there (or loses both when
    it keeps nothing): transformers' layers have no form without heads or without neurons."""
    for layer, (heads, neurons) in enumerate(zip(head_masks, neuron_masks)):
        if heads.any() and not neurons.any():
            neurons[_best_alive(neuron_scores[layer], alive_neurons[layer])] = True
        elif neurons.any() and not heads.any():
            heads[_best_alive(head_scores[layer], alive_heads[layer])] = True


def kept_count(alive: list[torch.Tensor], share: float) -> int:
    """How many units of a kind a share keeps: of all the model had, never more than are still there."""
    return min(int(sum(a.sum() for a in alive)), round(share * sum(a.numel() for a in alive)))


def select_by_share(head_scores, neuron_scores, alive_heads, alive_neurons, heads_kept: float, neurons_kept: float):
    """Keep the best `heads_kept` share of all heads and `neurons_kept` of all neurons, across layers."""
    def top(scores, alive, share):
        flat = torch.cat([torch.where(a, s, torch.tensor(-math.inf)) for s, a in zip(scores, alive)])
        keep = torch.zeros_like(flat, dtype=torch.bool)
        keep[torch.topk(flat, kept_count(alive, share)).indices] = True
        return list(keep.split([s.numel() for s in scores]))

    head_masks = top(head_scores, alive_heads, heads_kept)
    neuron_masks = top(neuron_scores, alive_neurons, neurons_kept)
    _keep_one_of_each(head_masks, neuron_masks, head_scores, neuron_scores, alive_heads, alive_neurons)
    return head_masks, neuron_masks


def select_by_latency(head_scores, neuron_scores, alive_heads, alive_neurons, table: LatencyTable,
                      target_ms: float):
    """Remove units, the least score per millisecond saved first, until the table's estimate is within target_ms.
    Neurons go in steps of 1/48 of the layer's width (the table's resolution); a layer's last head and neurons go
    only together, as the whole layer. The last step is the smallest that reaches the target."""
    if target_ms <= table.table["rest_ms"]:
        raise ValueError(f"a target of {target_ms:.3g} ms is out of reach in {table.source}: the model without any "
                         f"layer takes {table.table['rest_ms']:.3g} ms")
    head_masks = [a.clone() for a in alive_heads]
    neuron_masks = [a.clone() for a in alive_neurons]
    order_h = [sorted(torch.nonzero(a).squeeze(1).tolist(), key=lambda i, s=s: float(s[i]))
               for s, a in zip(head_scores, alive_heads)]
    order_n = [sorted(torch.nonzero(a).squeeze(1).tolist(), key=lambda i, s=s: float(s[i]))
               for s, a in zip(neuron_scores, alive_neurons)]
    step = [max(1, m.numel() // 48) for m in neuron_masks]

    def widths():
        return [(len(h), len(n)) for h, n in zip(order_h, order_n)]

    while (current := table.estimate_ms(widths())) > target_ms:
        best = None
        options = []
        for layer, (h, n) in enumerate(widths()):
            if not h and not n:
                continue
            candidates = []
            if h > 1:
                candidates.append(("head", 1, float(head_scores[layer][order_h[layer][0]]),
                                   table.attention_ms(h) - table.attention_ms(h - 1)))
            if n > step[layer]:
                chunk = order_n[layer][:step[layer]]
                candidates.append(("neurons", len(chunk), float(neuron_scores[layer][chunk].sum()),
                                   table.ffn_ms(n) - table.ffn_ms(n - len(chunk))))
            lost = float(head_scores[layer][order_h[layer]].sum() + neuron_scores[layer][order_n[layer]].sum())
            candidates.append(("layer", 0, lost, table.attention_ms(h) + table.ffn_ms(n)))
            options += [(score / max(saved, 1e-9), saved, layer, kind, count)
                        for kind, count, score, saved in candidates]
        if not options:
            break
        # the least score per millisecond among the steps that do not pass the target; once every step passes
        # it, the smallest step (so the target is met with the least overshoot)
        within = [option for option in options if option[1] <= current - target_ms]
        best = min(within) if within else min(options, key=lambda option: option[1])
        _, _, layer, kind, count = best
        if kind == "head":
            head_masks[layer][order_h[layer].pop(0)] = False
        elif kind == "neurons":
            for index in order_n[layer][:count]:
                neuron_masks[layer][index] = False
            del order_n[layer][:count]
        else:
            head_masks[layer][:] = False
            neuron_masks[layer][:] = False
            order_h[layer], order_n[layer] = [], []
    return head_masks, neuron_masks


# ---- the modifier --------------------------------------------------------------------------------------------

@PyTorchModifierYAML()
class StructuredPruningModifier(ScheduledUpdateModifier):
    """Heads and FFN neurons pruned gradually (see the module's docstring for the recipe keys)."""

    def __init__(self, start_epoch: float, end_epoch: float, update_frequency: float = -1.0,
                 heads_kept: float | None = None, neurons_kept: float | None = None, speedup: float | None = None,
                 latency_table: str | None = None, score: str = "fisher", num_grads: int = 64,
                 grad_sampler_kwargs: dict | None = None):
        super().__init__(start_epoch=start_epoch, end_epoch=end_epoch, update_frequency=update_frequency,
                         min_start=0.0, min_end=0.0, end_comparator=0)
        self._heads_kept, self._neurons_kept = heads_kept, neurons_kept
        self._speedup, self._latency_table = speedup, latency_table
        self._score, self._num_grads = score, int(num_grads)
        self._grad_sampler_kwargs = grad_sampler_kwargs
        self._check_settings()
        if latency_table and not os.path.isfile(latency_table):
            raise ValueError(f"latency_table {latency_table}: no such file (build one with python -m "
                             f"sparsebert.latency)")
        self._table = LatencyTable.load(latency_table) if latency_table else None
        if self._table is not None and speedup > self._table.max_speedup:
            raise ValueError(f"speedup {speedup:g} is out of reach in {latency_table}: removing every layer gives "
                             f"{self._table.max_speedup:.2f}x")
        self._head_masks = self._neuron_masks = None
        self._grad_sampler = None

    def _check_settings(self):
        if self._score not in SCORES:
            raise ValueError(f"score {self._score!r}: choose one of {', '.join(SCORES)}")
        share = self._heads_kept is not None or self._neurons_kept is not None
        if share == (self._speedup is not None):
            raise ValueError("give either heads_kept and neurons_kept (shares kept) or speedup with latency_table")
        if share:
            for name in ("heads_kept", "neurons_kept"):
                value = getattr(self, f"_{name}")
                if value is None:
                    setattr(self, f"_{name}", 1.0)
                elif not 0 < value <= 1:
                    raise ValueError(f"{name} {value:g}: a share of the model's units, more than 0 (nothing kept) "
                                     f"and at most 1 (all of them)")
        else:
            if self._speedup <= 1:
                raise ValueError(f"speedup {self._speedup:g}: a target over the dense model must exceed 1")
            if not self._latency_table:
                raise ValueError("speedup needs latency_table: build one with python -m sparsebert.latency")
        if self._num_grads < 1:
            raise ValueError(f"num_grads {self._num_grads}: at least 1")

    # recipe keys, so that the saved recipe.yaml holds them
    @ModifierProp()
    def heads_kept(self):
        return self._heads_kept

    @ModifierProp()
    def neurons_kept(self):
        return self._neurons_kept

    @ModifierProp()
    def speedup(self):
        return self._speedup

    @ModifierProp()
    def latency_table(self):
        return self._latency_table

    @ModifierProp()
    def score(self):
        return self._score

    @ModifierProp()
    def num_grads(self):
        return self._num_grads

    @ModifierProp()
    def grad_sampler_kwargs(self):
        return self._grad_sampler_kwargs

    @property
    def needs_gradients(self) -> bool:
        return self._score != "magnitude"

    @property
    def masks(self):
        """(head masks, neuron masks) per layer, True = kept; None before the modifier is initialized."""
        return None if self._head_masks is None else (self._head_masks, self._neuron_masks)

    def check_model(self, model):
        """Before training: the latency table must be this model's."""
        if self._table is not None:
            units = layer_units(model)
            first = units[0]
            self._table.check_fits(first.query.in_features, first.num_heads, first.head_size, first.num_neurons,
                                   len(units))

    def initialize(self, module, epoch: float = 0, loggers=None, **kwargs):
        super().initialize(module, epoch, loggers, **kwargs)
        self.check_model(module)
        # the masks are the model's zeros, read at the first update: a resumed run's checkpoint (masked weights)
        # is loaded after the recipe is initialized
        self._head_masks = self._neuron_masks = None
        if self.needs_gradients:
            sampler = kwargs.get("grad_sampler")
            if not sampler:
                raise ValueError(f"score {self._score} needs gradient samples: the training loop passes grad_sampler")
            self._grad_sampler = GradSampler(sampler["data_loader_builder"](self._grad_sampler_kwargs),
                                             sampler["loss_function"])

    def schedule_progress(self, epoch: float) -> float:
        """How far the schedule has gone: 0 at start_epoch, 1 at end_epoch, cubic as GMP, on the update grid (so a
        resumed run's first update repeats its checkpoint's level instead of pruning ahead of the recipe)."""
        if self.end_epoch <= self.start_epoch:
            return 1.0
        if self.update_frequency > 0:
            epoch = self.start_epoch + math.floor((epoch - self.start_epoch) / self.update_frequency + 1e-9) * \
                self.update_frequency
        progress = min(max((epoch - self.start_epoch) / (self.end_epoch - self.start_epoch), 0.0), 1.0)
        return 1 - (1 - progress) ** 3

    def update(self, module, optimizer, epoch: float, steps_per_epoch: int):
        super().update(module, optimizer, epoch, steps_per_epoch)
        self.prune(module, self.schedule_progress(epoch))

    def prune(self, model, progress: float):
        """Prune to the schedule's level at `progress` (0: dense, 1: the target); after initialize."""
        if self._head_masks is None:
            self._head_masks, self._neuron_masks = masks_from_zeros(model)
        alive = sum(int(m.sum()) for m in self._head_masks + self._neuron_masks)
        if self._speedup is not None:
            dense_ms = self._table.dense_ms
            target_ms = dense_ms - progress * (dense_ms - dense_ms / self._speedup)
            current = [(int(h.sum()), int(n.sum())) for h, n in zip(self._head_masks, self._neuron_masks)]
            if self._table.estimate_ms(current) <= target_ms:
                return
        else:
            heads = 1 - progress * (1 - self._heads_kept)
            neurons = 1 - progress * (1 - self._neurons_kept)
            if kept_count(self._head_masks, heads) + kept_count(self._neuron_masks, neurons) == alive:
                return  # the units are already at this level (the start; a resumed run's first update)
        scores = self.unit_scores(model)
        if self._speedup is not None:
            masks = select_by_latency(*scores, self._head_masks, self._neuron_masks, self._table, target_ms)
        else:
            masks = select_by_share(*scores, self._head_masks, self._neuron_masks, heads, neurons)
        self._head_masks, self._neuron_masks = masks
        apply_masks(model, *masks)
        kept = sum(int(m.sum()) for m in masks[0] + masks[1])
        logger.info(f"Structured pruning at {progress:.0%} of its schedule: {alive - kept} units removed; heads kept "
                    f"per layer {[int(m.sum()) for m in masks[0]]}, neurons {[int(m.sum()) for m in masks[1]]}")

    def unit_scores(self, model):
        if self._score == "magnitude":
            return magnitude_scores(model)
        return gradient_scores(model, self._grad_sampler, self._num_grads, self._score)

    def optimizer_post_step(self, module, optimizer, epoch: float, steps_per_epoch: int):
        super().optimizer_post_step(module, optimizer, epoch, steps_per_epoch)
        if self._head_masks is not None and self.started:  # the optimizer moved the removed units' weights
            apply_masks(module, self._head_masks, self._neuron_masks)


def structured_pruning_modifiers(manager) -> list[StructuredPruningModifier]:
    return [m for m in manager.iter_modifiers() if isinstance(m, StructuredPruningModifier)]
