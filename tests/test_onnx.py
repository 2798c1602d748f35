"""The exported ONNX file computes what the PyTorch model computes, and keeps the pruned zeros."""

import numpy as np
import onnx
import onnxruntime
import pytest
import torch
from onnx import numpy_helper

from sparsebert.demo import make_bert, make_tokenizer
from sparsebert.families import input_names
from sparsebert.onnx_export import export_onnx, make_batch


def _prune_by_magnitude(model, fraction):
    pruned = {}
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "encoder.layer" in name and name.endswith("weight") and param.dim() == 2:
                threshold = param.abs().flatten().kthvalue(int(fraction * param.numel())).values
                param[param.abs() <= threshold] = 0.0
                pruned[name] = param.detach().clone()
    return pruned


@pytest.mark.parametrize("num_labels, outputs", [(None, ("start_logits", "end_logits")), (3, ("logits",))])
def test_onnx_matches_pytorch_on_two_shapes_and_keeps_zeros(tmp_path, num_labels, outputs):
    model = make_bert(num_labels=num_labels, hidden_size=32).eval()
    tokenizer = make_tokenizer()
    pruned = _prune_by_magnitude(model, 0.8)
    report = export_onnx(model, tokenizer, str(tmp_path), outputs)
    assert report["parity_ok"] and report["verify_shape"] != report["export_shape"]

    session = onnxruntime.InferenceSession(str(tmp_path / "model.onnx"))
    for batch_size, seq_len in ((1, 16), (3, 40)):
        batch = make_batch(tokenizer, batch_size, seq_len, seed=seq_len)
        onnx_out = session.run(list(outputs), {n: batch[n].numpy() for n in input_names(tokenizer)})
        with torch.no_grad():
            torch_out = model(**batch)
        mask = batch["attention_mask"].numpy().astype(bool)
        for name, got in zip(outputs, onnx_out):
            expected = torch_out[name].numpy()
            assert got.shape == expected.shape
            diff = np.abs(got - expected)
            assert (diff[mask] if diff.shape == mask.shape else diff).max() < 1e-4

    # every pruned matrix is in the file with its zeros (possibly transposed by the exporter)
    initializers = [numpy_helper.to_array(i) for i in onnx.load(str(tmp_path / "model.onnx")).graph.initializer]
    for name, weight in pruned.items():
        weight = weight.numpy()
        found = [a for a in initializers if a.shape in (weight.shape, weight.T.shape)
                 and (np.array_equal(a, weight) or np.array_equal(a, weight.T))]
        assert found, f"{name} not found in the ONNX initializers"
        assert (found[0] == 0).mean() >= 0.79
    assert report["initializer_sparsity"] > 0.5


def test_a_parity_failure_fails_the_run_with_exit_status_1(qa_model_dir, squad_files, tmp_path, monkeypatch):
    import json

    import run_qa
    import sparsebert.onnx_export
    from helpers import qa_args
    from sparsebert.cli import run_cli
    from sparsebert.errors import CheckFailed

    monkeypatch.setattr(sparsebert.onnx_export, "PARITY_TOLERANCE", 0.0)  # no file can pass: a forced mismatch
    output_dir = tmp_path / "out"
    argv = qa_args(qa_model_dir, squad_files, output_dir, "--do_eval", "--do_onnx_export")
    with pytest.raises(CheckFailed, match=r"model.onnx disagrees with the PyTorch model \(FP32: logits within 0"):
        run_qa.main(argv)
    report = json.load(open(output_dir / "onnx_parity.json"))  # the evidence stays for inspection
    assert not report["parity_ok"] and (output_dir / "model.onnx").is_file()
    with pytest.raises(SystemExit) as stopped:
        run_cli(lambda: run_qa.main(argv))
    assert stopped.value.code == 1


def test_export_hands_the_model_back_as_it_was(tmp_path):
    """The trainer's model is exported on the CPU in eval mode, then returned to its device and mode: training or
    evaluation after the export must not find it moved (a GPU run) or with dropout switched off."""
    model = make_bert(num_labels=2, hidden_size=32).train()
    moves = []
    move = model.to

    def recording_to(*args, **kwargs):
        moves.append(str(args[0]))
        return move(*args, **kwargs)

    model.to = recording_to
    export_onnx(model, make_tokenizer(), str(tmp_path), ("logits",))
    assert model.training
    assert moves == ["cpu", str(next(model.parameters()).device)]  # out to the CPU, then back where it was


def test_int8_rule_is_99_percent_for_a_model_rounding_leaves_alone_and_counts_from_its_own_floor_otherwise():
    from sparsebert.onnx_export import int8_rule

    def passes(agreement, mean_abs_diff, largest, floor):
        return int8_rule({"agreement": agreement, "mean_abs_diff": mean_abs_diff, "largest": largest}, floor)[0]

    steady = {"agreement": 1.0, "mean_abs_diff": 0.0}  # float32 rounding changes nothing: the plain rule
    assert passes(0.99, 0.05, 5.0, steady)
    assert not passes(0.985, 0.0, 5.0, steady)
    assert not passes(1.0, 0.051, 5.0, steady)
    # the SQuAD MiniLM measured: nudged, it keeps 97% of its answer positions (mean logit move 0.054 of a largest
    # 6.76); onnxruntime running its export keeps 98% (0.057)
    sensitive = {"agreement": 0.97, "mean_abs_diff": 0.054}
    assert passes(0.98, 0.057, 6.76, sensitive)
    assert passes(0.96, 0.12, 6.76, sensitive)
    assert not passes(0.955, 0.057, 6.76, sensitive)
    # a graph that departs from the model (3-7% of the largest logit on average) fails all the same
    assert not passes(0.98, 0.03 * 6.76, 6.76, sensitive)


def _quantized_linear():
    from torch.ao.quantization import QuantWrapper, disable_observer, get_default_qat_qconfig, prepare_qat

    torch.manual_seed(0)
    layer = QuantWrapper(torch.nn.Linear(8, 4))
    layer.qconfig = get_default_qat_qconfig("fbgemm")
    prepare_qat(layer, inplace=True)
    layer(torch.randn(256, 8))  # the observers take their ranges
    layer.apply(disable_observer)
    return layer.eval()


def test_nudge_rounding_moves_values_at_rounding_ties_of_activation_quantizers_only_and_comes_off():
    from sparsebert.quantization import nudge_rounding

    layer = _quantized_linear()
    quantizer = layer.quant.activation_post_process
    scale = quantizer.scale.item()
    ties = ((torch.arange(32 * 8).reshape(32, 8) % 200 - 100 + 0.5) * scale).float()  # each halfway between steps
    plain = quantizer(ties)
    weights_seen = []
    layer.module.weight_fake_quant.register_forward_pre_hook(lambda module, inputs: weights_seen.append(inputs[0]))

    handles = nudge_rounding(layer)
    assert len(handles) == 2  # the quantizers of the layer's input and output, not its weight's
    nudged_inputs = quantizer(ties)
    nudged_outputs = layer(ties)
    moved = (torch.round(nudged_inputs / scale) != torch.round(plain / scale)).float().mean()
    assert 0.05 < moved < 0.8  # a tie may go either way (float32 puts some of them a little off the half)
    assert torch.equal(weights_seen[-1], layer.module.weight)  # weights are stored integers: no rounding to nudge
    for handle in handles:
        handle.remove()
    assert torch.equal(quantizer(ties), plain)
    assert not torch.equal(layer(ties), nudged_outputs)
