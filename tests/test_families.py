"""Not only BERT: tiny DistilBERT and RoBERTa (a byte-level BPE tokenizer trained here) through run_qa.py and
run_glue.py with the shipped recipes, layer dropping, distillation, export and reload; other types refused."""

import json
import os

import pytest
from transformers import (AlbertConfig, AlbertModel, DistilBertConfig, DistilBertForQuestionAnswering,
                          DistilBertForSequenceClassification, DistilBertTokenizerFast, RobertaConfig,
                          RobertaForQuestionAnswering, RobertaForSequenceClassification, RobertaTokenizerFast)

import run_glue
import run_qa
from conftest import RECIPES
from helpers import qa_args, refused_on_the_command_line
from sparsebert.demo import make_qa_examples, make_tokenizer, vocabulary

GMP = os.path.join(RECIPES, "80sparsity2epoch.yaml")
# the six matrices of a layer, in each family's own names
SIX = {"distilbert": ["attention.q_lin", "attention.k_lin", "attention.v_lin", "attention.out_lin", "ffn.lin1",
                      "ffn.lin2"],
       "roberta": ["attention.self.query", "attention.self.key", "attention.self.value", "attention.output.dense",
                   "intermediate.dense", "output.dense"]}


def _roberta_tokenizer(folder):
    """A byte-level BPE learnt from the demo's sentences, wrapped as RoBERTa's tokenizer."""
    from tokenizers import ByteLevelBPETokenizer

    texts = [row[key] for row in make_qa_examples(60, seed=11) for key in ("context", "question")]
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(texts, vocab_size=400, min_frequency=1,
                            special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"])
    bpe.save_model(str(folder))
    merges = [tuple(line.split()) for line in open(folder / "merges.txt").read().splitlines()
              if line and not line.startswith("#")]
    return RobertaTokenizerFast(vocab=json.load(open(folder / "vocab.json")), merges=merges)


def _save_model(folder, family, head):
    """A 2-layer model of the family, QA head or 2-class head, with its tokenizer, saved the HF way."""
    folder.mkdir(parents=True, exist_ok=True)
    if family == "distilbert":
        tokenizer = DistilBertTokenizerFast(vocab={t: i for i, t in enumerate(vocabulary())}, do_lower_case=True)
        config = DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=4, hidden_dim=64,
                                  max_position_embeddings=128, num_labels=2)
        classes = (DistilBertForQuestionAnswering, DistilBertForSequenceClassification)
    else:
        tokenizer = _roberta_tokenizer(folder)
        config = RobertaConfig(vocab_size=len(tokenizer), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                               intermediate_size=64, max_position_embeddings=130, type_vocab_size=1,
                               pad_token_id=tokenizer.pad_token_id, num_labels=2)
        classes = (RobertaForQuestionAnswering, RobertaForSequenceClassification)
    model_class = classes[0] if head == "qa" else classes[1]
    model_class(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return str(folder)


def _json(path):
    with open(path) as handle:
        return json.load(handle)


def _pruned_matrices(report):
    return sorted(row["name"] for row in report["parameters"] if row["targeted"])


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_question_answering_with_a_shipped_recipe_layer_dropping_and_export(family, squad_files, tmp_path):
    model_dir = _save_model(tmp_path / "model", family, "qa")
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(model_dir, squad_files, output_dir, "--do_train", "--do_eval", "--do_onnx_export",
                        "--nm_prune_config", GMP, "--layers_to_keep", "1"))
    report = _json(output_dir / "sparsity_report.json")
    layer = {"distilbert": "distilbert.transformer.layer.0", "roberta": "roberta.encoder.layer.0"}[family]
    assert _pruned_matrices(report) == sorted(f"{layer}.{name}.weight" for name in SIX[family])
    assert report["targeted_sparsity"] == pytest.approx(0.8, abs=0.005)
    config = _json(output_dir / "config.json")
    assert config["n_layers" if family == "distilbert" else "num_hidden_layers"] == 1
    parity = _json(output_dir / "onnx_parity.json")
    assert parity["parity_ok"]
    import onnx

    inputs = [i.name for i in onnx.load(str(output_dir / "model.onnx")).graph.input]
    assert inputs == ["input_ids", "attention_mask"]  # what these tokenizers give: no token_type_ids

    # the saved, shallower model reloads and evaluates to the same answers
    run_qa.main(qa_args(str(output_dir), squad_files, tmp_path / "reloaded", "--do_eval"))
    assert (_json(tmp_path / "reloaded" / "eval_results.json")["eval_f1"]
            == pytest.approx(_json(output_dir / "eval_results.json")["eval_f1"], abs=1e-9))


@pytest.mark.parametrize("family", ["distilbert", "roberta"])
def test_classification_distilled_with_a_shipped_recipe(family, tmp_path):
    model_dir = _save_model(tmp_path / "model", family, "classification")
    rows = [{"sentence": f"the {thing} is {color} .", "label": int(i % 2)}
            for i, (thing, color) in enumerate(zip(["lamp", "cup", "kite", "boat"] * 12, ["red", "blue"] * 24))]
    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps(row) + "\n" for row in rows))
    output_dir = tmp_path / "out"
    run_glue.main(["--model_name_or_path", model_dir, "--task_name", "sst2", "--train_file", str(data),
                   "--validation_file", str(data), "--output_dir", str(output_dir), "--max_seq_length", "32",
                   "--per_device_train_batch_size", "8", "--learning_rate", "1e-3", "--report_to", "none",
                   "--save_strategy", "no", "--use_cpu", "true", "--do_train", "--do_eval", "--do_onnx_export",
                   "--nm_prune_config", os.path.join(RECIPES, "90sparsity2epoch.yaml"),
                   "--teacher_model_name_or_path", model_dir, "--logging_steps", "2"])
    report = _json(output_dir / "sparsity_report.json")
    assert len(_pruned_matrices(report)) == 6 * 2
    assert report["targeted_sparsity"] == pytest.approx(0.9, abs=0.005)
    assert _json(output_dir / "onnx_parity.json")["parity_ok"]
    assert any("distill_loss" in h for h in _json(output_dir / "trainer_state.json")["log_history"])


def test_an_unsupported_model_type_is_refused_by_name(squad_files, tmp_path):
    folder = tmp_path / "albert"
    AlbertModel(AlbertConfig(vocab_size=len(vocabulary()), hidden_size=32, num_hidden_layers=1,
                             num_attention_heads=4, intermediate_size=64, embedding_size=16)).save_pretrained(folder)
    make_tokenizer().save_pretrained(folder)
    with refused_on_the_command_line(r"--model_name_or_path .*albert: model type 'albert' is not supported "
                                     r"\(supported: bert, roberta, distilbert"):
        run_qa.main(qa_args(str(folder), squad_files, tmp_path / "out", "--do_train"))
    assert not (tmp_path / "out").exists()


def test_a_distilbert_saved_with_a_bert_tokenizer_exports_the_inputs_it_takes(tmp_path):
    # a pairing often seen on the Hub: the tokenizer gives token_type_ids, which DistilBERT ignores; the file takes
    # the inputs both have, and its check (fed a batch with token_type_ids, as a run's data has) passes
    import onnx
    import torch

    from sparsebert.onnx_export import export_onnx, make_batch

    tokenizer = make_tokenizer()
    assert "token_type_ids" in tokenizer.model_input_names
    torch.manual_seed(0)
    model = DistilBertForQuestionAnswering(DistilBertConfig(vocab_size=len(tokenizer), dim=32, n_layers=2, n_heads=4,
                                                            hidden_dim=64, max_position_embeddings=128))
    batch = make_batch(tokenizer, batch_size=4, seq_len=24, seed=5)
    report = export_onnx(model, tokenizer, str(tmp_path), ("start_logits", "end_logits"), verify_batch=batch)
    assert report["parity_ok"] and report["max_abs_diff"] < 1e-4
    assert [i.name for i in onnx.load(str(tmp_path / "model.onnx")).graph.input] == ["input_ids", "attention_mask"]
