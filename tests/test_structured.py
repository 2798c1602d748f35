"""Structured pruning: heads and FFN neurons scored, removed to a share or a speed target, cut out of the weights,
saved with their widths, reloaded, exported; bad targets refused in one line."""

import json
import os

import pytest
import torch
from transformers import (AutoConfig, AutoModelForQuestionAnswering, BertForQuestionAnswering, DistilBertConfig,
                          DistilBertForQuestionAnswering, RobertaConfig, RobertaForQuestionAnswering)

import run_qa
from conftest import RECIPES
from helpers import qa_args
from sparsebert.demo import make_bert
from sparsebert.errors import UsageError
from sparsebert.latency import LatencyTable, table_for_model
from sparsebert.recipe import load_recipe
from sparsebert.structure import (apply_masks, compact, layer_units, layer_widths, load_compacted,
                                  masks_from_zeros)
from sparsebert.structured_pruning import (StructuredPruningModifier, gate_gradients, magnitude_scores,
                                           select_by_latency, select_by_share)

KEPT50 = os.path.join(RECIPES, "structured_kept50.yaml")


def _model(family, layers=3):
    torch.manual_seed(0)
    if family == "bert":
        return make_bert(hidden_size=32, num_layers=layers)
    if family == "roberta":
        return RobertaForQuestionAnswering(RobertaConfig(vocab_size=100, hidden_size=32, num_hidden_layers=layers,
                                                         num_attention_heads=4, intermediate_size=64,
                                                         max_position_embeddings=130))
    return DistilBertForQuestionAnswering(DistilBertConfig(vocab_size=100, dim=32, n_layers=layers, n_heads=4,
                                                           hidden_dim=64, max_position_embeddings=128))


def _inputs(batch=3, length=20):
    generator = torch.Generator().manual_seed(1)
    ids = torch.randint(5, 90, (batch, length), generator=generator)
    mask = torch.ones_like(ids)
    mask[0, 15:] = 0
    return {"input_ids": ids, "attention_mask": mask}


def _logits(model, inputs):
    model.eval()
    with torch.no_grad():
        out = model(**inputs)
    return torch.stack([out.start_logits, out.end_logits])


def _random_masks(model, seed=0):
    generator = torch.Generator().manual_seed(seed)
    heads, neurons = [], []
    for units in layer_units(model):
        h = torch.rand(units.num_heads, generator=generator) < 0.5
        n = torch.rand(units.num_neurons, generator=generator) < 0.4
        h[0], n[0] = True, True
        heads.append(h)
        neurons.append(n)
    # the last layer keeps nothing: it goes
    heads[-1][:] = False
    neurons[-1][:] = False
    return heads, neurons


@pytest.mark.parametrize("family", ["bert", "roberta", "distilbert"])
def test_a_compacted_model_computes_what_its_masked_self_does_and_reloads(family, tmp_path):
    model = _model(family)
    inputs = _inputs()
    heads, neurons = _random_masks(model)
    apply_masks(model, heads, neurons)
    masked = _logits(model, inputs)
    assert [m.tolist() for m in masks_from_zeros(model)[0]] == [m.tolist() for m in heads]  # zeros hold the masks

    compact(model, heads, neurons)
    assert layer_widths(model) == [(int(h.sum()), int(n.sum())) for h, n in zip(heads[:-1], neurons[:-1])]
    assert torch.allclose(_logits(model, inputs), masked, atol=1e-5)
    before = sum(p.numel() for p in _model(family).parameters())
    assert sum(p.numel() for p in model.parameters()) < 0.75 * before

    model.save_pretrained(tmp_path)
    config = AutoConfig.from_pretrained(tmp_path)
    assert config.is_heterogeneous and len(config.per_layer_config) == 2  # widths recorded per layer
    reloaded = load_compacted(type(model), str(tmp_path), config)
    assert torch.allclose(_logits(reloaded, inputs), masked, atol=1e-5)
    # plain transformers refuses to build it with one width for every layer (it would load wrongly)
    with pytest.raises(RuntimeError, match="per-layer attribute"):
        type(model).from_pretrained(tmp_path)


def test_the_same_ffn_width_in_every_layer_loads_with_plain_from_pretrained(tmp_path):
    model = _model("bert")
    heads = [torch.ones(4, dtype=torch.bool)] * 3
    neurons = [torch.arange(64) % 4 != 0 for _ in range(3)]  # 48 of 64 in each layer
    apply_masks(model, heads, neurons)
    inputs = _inputs()
    masked = _logits(model, inputs)
    compact(model, heads, neurons)
    model.save_pretrained(tmp_path)
    assert json.load(open(tmp_path / "config.json"))["intermediate_size"] == 48
    plain = BertForQuestionAnswering.from_pretrained(tmp_path)
    assert torch.allclose(_logits(plain, inputs), masked, atol=1e-5)


def test_magnitude_scores_decide_which_heads_and_neurons_go():
    model = _model("bert", layers=2)
    with torch.no_grad():  # make layer 1's heads 2 and 3, and neurons 0-9 of layer 0, the weakest
        units = layer_units(model)
        for linear in (units[1].query, units[1].key, units[1].value):
            linear.weight[16:] *= 0.01
            linear.bias[16:] *= 0.01
        units[1].attention_out.weight[:, 16:] *= 0.01
        units[0].ffn_in.weight[:10] *= 0.01
        units[0].ffn_in.bias[:10] *= 0.01
        units[0].ffn_out.weight[:, :10] *= 0.01
    scores = magnitude_scores(model)
    alive = masks_from_zeros(model)
    heads, neurons = select_by_share(*scores, *alive, heads_kept=6 / 8, neurons_kept=118 / 128)
    assert heads[1].tolist() == [True, True, False, False] and heads[0].all()
    assert not neurons[0][:10].any() and neurons[0][10:].all() and neurons[1].all()
    # the same selection with the scores reversed keeps what was removed: the score is what decides
    reversed_heads, _ = select_by_share([-s for s in scores[0]], [-s for s in scores[1]], *alive, 6 / 8, 118 / 128)
    assert reversed_heads[1][2:].all()


def test_gate_gradients_are_the_loss_slope_of_removing_a_unit():
    """dL/d(gate) from the weight gradients equals the change in loss when a head is scaled by (1 - eps)."""
    model = _model("bert", layers=1).double()
    model.eval()
    inputs = dict(_inputs(), start_positions=torch.tensor([1, 2, 3]), end_positions=torch.tensor([4, 5, 6]))
    model.zero_grad()
    model(**inputs).loss.backward()
    head_grads, _ = gate_gradients(model)
    units = layer_units(model)[0]
    eps = 1e-6
    with torch.no_grad():
        base = model(**inputs).loss
        units.attention_out.weight[:, 8:16] *= 1 - eps  # head 1's output scaled down
        shifted = model(**inputs).loss
    assert (shifted - base) / -eps == pytest.approx(float(head_grads[0][1]), rel=1e-3)


def _table(layers=3, heads=4, neurons=64):
    """A latency table with costs proportional to width (a made-up runtime, to test the arithmetic)."""
    return LatencyTable({"runtime": "onnxruntime", "batch": 1, "seq_len": 128, "hidden": 32, "head_size": 8,
                         "heads": heads, "neurons": neurons, "layers": layers, "rest_ms": 1.0,
                         "attention_ms": {str(h): 0.5 + 1.0 * h for h in range(1, heads + 1)},
                         "ffn_ms": {str(n): 0.2 + 0.05 * n for n in range(8, neurons + 1, 8)}})


@pytest.mark.parametrize("speedup", [1.5, 2.0, 3.0])
def test_a_speed_target_is_met_within_ten_percent_of_the_tables_estimate(speedup):
    table = _table()
    model = _model("bert")
    scores = magnitude_scores(model)
    heads, neurons = select_by_latency(*scores, *masks_from_zeros(model), table, table.dense_ms / speedup)
    widths = [(int(h.sum()), int(n.sum())) for h, n in zip(heads, neurons)]
    achieved = table.estimated_speedup(widths)
    assert speedup <= achieved <= 1.1 * speedup
    assert all((h == 0) == (n == 0) for h, n in widths)  # a layer keeps one of each, or goes whole


def test_a_latency_table_is_measured_for_the_models_shapes():
    model = _model("bert", layers=2)
    table = table_for_model(model, batch=1, seq_len=16, repeats=3, neuron_levels=4)
    assert (table["heads"], table["neurons"], table["head_size"], table["layers"]) == (4, 64, 8, 2)
    assert sorted(int(h) for h in table["attention_ms"]) == [1, 2, 3, 4]
    assert len(table["ffn_ms"]) == 4 and all(v > 0 for v in table["ffn_ms"].values())
    estimate = LatencyTable(table)
    assert estimate.dense_ms > estimate.estimate_ms([(1, 16), (1, 16)]) > estimate.table["rest_ms"]


def _recipe(tmp_path, **settings):
    lines = "\n".join(f"    {key}: {value}" for key, value in settings.items())
    path = tmp_path / "recipe.yaml"
    path.write_text("modifiers:\n  - !StructuredPruningModifier\n    start_epoch: 0.0\n    end_epoch: 1.0\n"
                    f"    update_frequency: 0.5\n{lines}\n")
    return str(path)


@pytest.mark.parametrize("settings, message", [
    ({"heads_kept": 1.5}, "heads_kept 1.5: a share of the model's units, more than 0 (nothing kept) and at most 1"),
    ({"neurons_kept": 0.0}, "neurons_kept 0: a share"),
    ({"speedup": 2.0}, "speedup needs latency_table"),
    ({"heads_kept": 0.5, "speedup": 2.0}, "give either heads_kept and neurons_kept"),
    ({"heads_kept": 0.5, "score": "random"}, "score 'random': choose one of magnitude, taylor, fisher"),
])
def test_bad_targets_are_refused_in_one_line(tmp_path, settings, message):
    with pytest.raises(UsageError) as error:
        load_recipe(_recipe(tmp_path, **settings))
    assert message in str(error.value) and "\n" not in str(error.value)


def test_a_speed_target_the_table_cannot_reach_is_refused(tmp_path):
    table_path = tmp_path / "table.json"
    table_path.write_text(json.dumps(_table().table))
    with pytest.raises(UsageError, match=r"speedup 40 is out of reach in .*table.json: removing every layer gives "
                                         r"\d+\.\d+x"):
        load_recipe(_recipe(tmp_path, speedup=40.0, latency_table=str(table_path)))


def test_a_latency_table_of_another_model_is_refused_before_training(qa_model_dir, squad_files, tmp_path):
    table_path = tmp_path / "table.json"
    table_path.write_text(json.dumps(_table(layers=6).table))
    recipe = _recipe(tmp_path, speedup=2.0, latency_table=str(table_path), score="magnitude")
    with pytest.raises(UsageError, match="was built for hidden 32, this model has|was built for layers 6, this "
                                         "model has 2"):
        run_qa.main(qa_args(qa_model_dir, squad_files, tmp_path / "out", "--do_train", "--nm_prune_config",
                            recipe))
    assert not (tmp_path / "out").exists()


def test_the_shipped_recipe_prunes_compacts_and_the_saved_model_reloads_and_exports(qa_model_dir, squad_files,
                                                                                     tmp_path):
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(qa_model_dir, squad_files, output_dir, "--do_train", "--do_eval", "--do_onnx_export",
                        "--nm_prune_config", KEPT50, "--recipe_args",
                        json.dumps({"num_epochs": 8.0, "num_grads": 4, "grad_batch_size": 4}),
                        "--teacher_model_name_or_path", qa_model_dir))
    config = AutoConfig.from_pretrained(output_dir)
    widths = [(layer.num_attention_heads, layer.intermediate_size) for layer in config.per_layer_config]
    # half of the 8 heads and of the 128 neurons, ranked across the two layers
    assert sum(h for h, _ in widths) == 4 and sum(n for _, n in widths) == 64
    assert json.load(open(output_dir / "onnx_parity.json"))["parity_ok"]
    # the saved recipe.yaml holds the structured modifier with the values it ran with
    saved = load_recipe(str(output_dir / "recipe.yaml"))
    modifier = next(m for m in saved.iter_modifiers() if isinstance(m, StructuredPruningModifier))
    assert (modifier.num_grads, modifier.heads_kept, modifier.end_epoch) == (4, 0.5, 6.0)
    # evaluation-only from the saved folder reproduces the metrics
    run_qa.main(qa_args(str(output_dir), squad_files, tmp_path / "eval", "--do_eval"))
    assert (json.load(open(tmp_path / "eval" / "eval_results.json"))["eval_f1"]
            == pytest.approx(json.load(open(output_dir / "eval_results.json"))["eval_f1"], abs=1e-9))
    model = load_compacted(AutoModelForQuestionAnswering, str(output_dir), config)
    assert layer_widths(model) == widths
    # and deployed in OpenVINO (our windowing and post-processing around the file) it answers as PyTorch does
    from bench.deploy_check import check_folder

    examples = [json.loads(line) for line in open(squad_files["dev_jsonl"])]
    row = check_folder(None, "qa", str(output_dir), "structured", examples, engine="openvino")
    assert row["engine"] == "openvino" and row["examples"] == len(examples) and row["agreement"] >= 0.99


def test_a_speed_target_recipe_prunes_to_the_tables_estimate(qa_model_dir, squad_files, tmp_path):
    """The speed-target recipe with the first-order score: the saved model is as fast as asked, by the table."""
    table_path = tmp_path / "table.json"  # the tiny model's shapes, made-up times (a timed tiny model is all noise)
    table_path.write_text(json.dumps(_table(layers=2).table))
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(qa_model_dir, squad_files, output_dir, "--do_train", "--do_onnx_export",
                        "--nm_prune_config", os.path.join(RECIPES, "structured_speedup.yaml"), "--recipe_args",
                        json.dumps({"num_epochs": 8.0, "num_grads": 4, "grad_batch_size": 4, "speedup": 1.5,
                                    "latency_table": str(table_path), "score": "taylor"}),
                        "--teacher_model_name_or_path", qa_model_dir))
    table = LatencyTable.load(str(table_path))
    pruned = load_compacted(AutoModelForQuestionAnswering, str(output_dir), AutoConfig.from_pretrained(output_dir))
    assert 1.5 <= table.estimated_speedup(layer_widths(pruned)) <= 1.1 * 1.5


def test_a_compacted_export_answers_like_pytorch_in_openvino(tmp_path):
    import openvino

    from sparsebert.demo import make_tokenizer
    from sparsebert.onnx_export import export_onnx, make_batch

    model = _model("bert")
    heads, neurons = _random_masks(model)
    compact(model, heads, neurons)
    tokenizer = make_tokenizer()
    report = export_onnx(model, tokenizer, str(tmp_path), ("start_logits", "end_logits"))
    assert report["parity_ok"]
    batch = make_batch(tokenizer, batch_size=4, seq_len=32, seed=3)
    compiled = openvino.Core().compile_model(report["onnx_path"], "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    results = compiled({name: batch[name].numpy() for name in ("input_ids", "attention_mask", "token_type_ids")})
    with torch.no_grad():
        expected = model.eval()(**batch)
    for name in ("start_logits", "end_logits"):
        got = torch.from_numpy(results[compiled.output(name)])
        assert torch.equal(got.argmax(-1), getattr(expected, name).argmax(-1))
        assert torch.allclose(got, getattr(expected, name), atol=1e-4)


def test_a_resumed_run_takes_its_masks_from_the_checkpoints_zeros_loaded_after_the_recipe_starts():
    """The trainer starts the recipe, then loads the checkpoint: the units its weights hold as zeros are the ones
    removed, and the first update at the checkpoint's schedule level removes nothing more and scores nothing."""
    from sparsebert.recipe import quiet_sparseml_loggers

    model = _model("bert", layers=2)
    modifier = StructuredPruningModifier(start_epoch=0.0, end_epoch=1.0, update_frequency=0.5, heads_kept=0.5,
                                         neurons_kept=0.5, score="magnitude")
    modifier.initialize(model, epoch=0.6, loggers=quiet_sparseml_loggers())
    # the checkpoint saved at epoch 0.6: the update at 0.5 had cut to 1 - 0.875 * 0.5 of the units of each kind
    progress = modifier.schedule_progress(0.6)
    assert progress == pytest.approx(1 - 0.5 ** 3)
    reference = _model("bert", layers=2)
    masks = select_by_share(*magnitude_scores(reference), *masks_from_zeros(reference),
                            1 - progress * 0.5, 1 - progress * 0.5)
    apply_masks(model, *masks)  # as loading the checkpoint's weights does

    def no_scoring(model):
        raise AssertionError("the units are already at this level: nothing to score (no gradients to sample)")

    modifier.unit_scores = no_scoring
    modifier.prune(model, progress)
    assert [m.tolist() for m in modifier.masks[0]] == [m.tolist() for m in masks[0]]
    assert [m.tolist() for m in modifier.masks[1]] == [m.tolist() for m in masks[1]]
