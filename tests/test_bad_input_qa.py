"""Bad input: one line naming the culprit, before training, nothing written or overwritten."""

import json
import os
import subprocess
import sys

import pytest

import run_qa
from conftest import RECIPES, REPO
from helpers import listing, qa_args, refused_on_the_command_line
from sparsebert.cli import as_flags

GMP = os.path.join(RECIPES, "80sparsity2epoch.yaml")
OBERT_QA, OBERT_GLUE = os.path.join(RECIPES, "obert80_squad.yaml"), os.path.join(RECIPES, "obert80_glue.yaml")
LAYER_PRUNING = "modifiers:\n  - !LayerPruningModifier\n    layers: [{layer}]\n    end_epoch: {end}\n"


def _write(tmp_path, name, text):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _expect_refusal(argv, pattern, watched):
    before = listing(watched)
    with refused_on_the_command_line(pattern):
        run_qa.main(argv)
    assert listing(watched) == before  # nothing written, nothing overwritten
    assert not os.path.exists("sparse_logs")


CASES = {
    "recipe missing": (["--nm_prune_config", "no/such/recipe.yaml"], r"--nm_prune_config no/such/recipe.yaml: no such file"),
    "recipe not YAML": (["--nm_prune_config", "@bad_yaml"], r"--nm_prune_config .*bad.yaml: not valid YAML \(line \d+: expected ','"),
    "unknown modifier": (["--nm_prune_config", "@unknown_modifier"], r"unknown modifier !MagicPruningModifier \(line 2\)"),
    "params match nothing": (["--nm_prune_config", "@roberta_params"],
                             r"params pattern 're:roberta.encoder.layer.\\d\+.attention.\(self.query\|q_lin\).weight' of "
                             r"GMPruningModifier "
                             r"matches no parameter of this model"),
    "recipe_args not JSON": (["--nm_prune_config", GMP, "--recipe_args", "{num_epochs: 3}"], r"--recipe_args is not valid JSON"),
    "recipe_args without recipe": (["--recipe_args", '{"num_epochs": 3}'], r"--recipe_args needs --nm_prune_config"),
    "teacher missing": (["--teacher_model_name_or_path", "no/such/teacher"],
                        r"--teacher_model_name_or_path no/such/teacher: no such folder"),
    "teacher without its task head": (["--teacher_model_name_or_path", "@base_model"],
                                      r"--teacher_model_name_or_path .*base: its checkpoint lacks qa_outputs.bias, "
                                      r"qa_outputs.weight \(a base model, not one fine-tuned for this task\?\)"),
    "recipe_args ending the run before its pruning": (
        ["--nm_prune_config", os.path.join(RECIPES, "80sparsity10epochs.yaml"), "--recipe_args", '{"num_epochs": 4}'],
        r"80sparsity10epochs.yaml with --recipe_args '\{\"num_epochs\": 4\}': its !EpochRangeModifier ends at epoch 4, "
        r"before its !GMPruningModifier \(epoch 8\)"),
    "train file missing": (["--train_file", "missing-train.json"], r"--train_file missing-train.json: no such file"),
    "validation file malformed": (["--validation_file", "@broken_json"], r"--validation_file .*broken.json: not valid JSON"),
    "doc_stride too large": (["--doc_stride", "60"], r"--doc_stride 60 is too large for --max_seq_length 64"),
    "max_seq_length above positions": (["--max_seq_length", "256"],
                                       r"--max_seq_length 256 is more than the model's 128 position embeddings"),
    "batch size 0": (["--per_device_train_batch_size", "0"], r"^--per_device_train_batch_size 0: must be at least 1$"),
    "tokenizer larger than the model's embedding": (["--tokenizer_name", "@big_tokenizer"],
                                                    r"--tokenizer_name .*big-tokenizer: its tokenizer has 142 tokens, "
                                                    r"more than the 92 of the model's embedding \(vocab_size\)"),
    "recipe variable sparseml cannot evaluate": (["--nm_prune_config", "@or_variable"],
                                                 r"or.yaml: pruning_end: eval\(num_epochs or 3\) is not an expression "
                                                 r"sparseml evaluates"),
    "recipe variable with an attribute": (["--nm_prune_config", "@attribute_variable"],
                                          r"attribute.yaml: pruning_end: eval\(math.floor\(num_epochs\)\) is not an "
                                          r"expression sparseml evaluates"),
    "unknown flag": (["--nm_prune_confg", GMP], r"unknown argument\(s\): \['--nm_prune_confg'"),
    "empty training set": (["--max_train_samples", "0"], r"the training set is empty"),
    "all answers misaligned": (["--train_file", "@misaligned"], r"the training set is empty"),
    "resume without checkpoint": (["--resume_from_checkpoint", "last"], r"--resume_from_checkpoint last: no complete "
                                                                        r"checkpoint-N folder in .*out"),
    "resume from a non-checkpoint": (["--resume_from_checkpoint", "@bad_yaml"], r"not a complete checkpoint folder"),
    "distillation modifier, no teacher": (["--recipe", OBERT_QA], r"obert80_squad.yaml: its !DistillationModifier "
                                                                  r"needs a teacher: pass --teacher_model_name_or_path"),
    "distillation keys of another head": (["--recipe", OBERT_GLUE, "--distill_teacher", "@model"],
                                          r"distill_output_keys \['logits'\] are not outputs of this model "
                                          r"\(it has start_logits, end_logits\)"),
    "unsupported modifier": (["--recipe", "@acdc"], r"!ACDCPruningModifier \(line 2\) is not supported by these "
                                                    r"scripts \(supported: EpochRangeModifier, "),
    "layer pruning of a part of a layer": (["--recipe", "@half_layer"], r"!LayerPruningModifier layer "
                                                                        r"'bert.encoder.layer.1.attention' is not an "
                                                                        r"encoder layer of this model"),
    "layer pruning that restores layers": (["--recipe", "@restored_layer"], r"end_epoch 1 would put the layers back"),
    "two ways to drop layers": (["--recipe", "@half_layer", "--layers_to_keep", "1"],
                                r"--layers_to_keep and the !LayerPruningModifier of .* both drop layers"),
    "two different recipes": (["--recipe", GMP, "--nm_prune_config", OBERT_QA],
                              r"--nm_prune_config .*obert80_squad.yaml and --recipe .*80sparsity2epoch.yaml name "
                              r"different things"),
    "two different teachers": (["--distill_teacher", "a", "--teacher_model_name_or_path", "b"],
                               r"--teacher_model_name_or_path b and --distill_teacher a name different things"),
}


@pytest.fixture
def bad_files(tmp_path, qa_model_dir):
    from transformers import AutoModel, AutoTokenizer, BertTokenizerFast

    from sparsebert.demo import vocabulary

    base = str(tmp_path / "base")  # the encoder alone, as a pretrained checkpoint is: no QA head
    AutoModel.from_pretrained(qa_model_dir).save_pretrained(base)
    AutoTokenizer.from_pretrained(qa_model_dir).save_pretrained(base)
    big_tokenizer = str(tmp_path / "big-tokenizer")  # 50 tokens more than the model was built for
    BertTokenizerFast(vocab={t: i for i, t in enumerate(vocabulary() + [f"extra{i}" for i in range(50)])}).save_pretrained(
        big_tokenizer)
    variable = "num_epochs: 2\npruning_end: {}\nmodifiers:\n  - !EpochRangeModifier\n    end_epoch: eval(num_epochs)\n"
    return {
        "base_model": base,
        "big_tokenizer": big_tokenizer,
        "or_variable": _write(tmp_path, "or.yaml", variable.format("eval(num_epochs or 3)")),
        "attribute_variable": _write(tmp_path, "attribute.yaml", variable.format("eval(math.floor(num_epochs))")),
        "bad_yaml": _write(tmp_path, "bad.yaml", "modifiers:\n  - !EpochRangeModifier\n    end_epoch: [1\n"),
        "unknown_modifier": _write(tmp_path, "unknown.yaml", "modifiers:\n  - !MagicPruningModifier\n    x: 1\n"),
        "roberta_params": _write(tmp_path, "roberta.yaml", open(GMP).read().replace("re:.*layer", "re:roberta.encoder.layer")),
        "broken_json": _write(tmp_path, "broken.json", '{"data": [{"title": '),
        "acdc": _write(tmp_path, "acdc.yaml", "modifiers:\n  - !ACDCPruningModifier\n    params: __ALL_PRUNABLE__\n"),
        "half_layer": _write(tmp_path, "half.yaml", LAYER_PRUNING.format(layer="bert.encoder.layer.1.attention",
                                                                          end=-1)),
        "restored_layer": _write(tmp_path, "restored.yaml", LAYER_PRUNING.format(layer="bert.encoder.layer.1",
                                                                                  end=1)),
        "misaligned": _write(tmp_path, "misaligned.jsonl", '{"id": "1", "context": "the cup is red .", "question": '
                             '"what color is the cup ?", "answers": {"text": ["red"], "answer_start": [3]}}\n'),
    }


@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_refused_before_training(case, qa_model_dir, squad_files, bad_files, tmp_path):
    extra, pattern = CASES[case]
    files = {**bad_files, "model": qa_model_dir}
    extra = [files[a[1:]] if a.startswith("@") else a for a in extra]
    output_dir = tmp_path / "out"
    _expect_refusal(qa_args(qa_model_dir, squad_files, output_dir, "--do_train", "--do_eval", *extra), pattern,
                    output_dir)
    assert not output_dir.exists()


def test_missing_model_is_named(squad_files, tmp_path, monkeypatch):
    _expect_refusal(qa_args(str(tmp_path / "no-model"), squad_files, tmp_path / "out", "--do_train"),
                    r"--model_name_or_path .*no-model: no such folder", tmp_path)
    # a mistyped folder next to real ones is a path, not a Hub name to try for 40 s
    monkeypatch.chdir(tmp_path)
    (tmp_path / "demo").mkdir()
    _expect_refusal(qa_args("demo/tiny-bret", squad_files, tmp_path / "out", "--do_train"),
                    r"^--model_name_or_path demo/tiny-bret: no such folder$", tmp_path)


def test_unreachable_hub_dataset_is_named(qa_model_dir, squad_files, tmp_path, monkeypatch):
    import utils_qa

    def offline(*args, **kwargs):  # what datasets raises without a network
        raise ConnectionError("Couldn't reach 'squad' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(utils_qa, "load_dataset", offline)
    argv = qa_args(qa_model_dir, squad_files, tmp_path / "out", "--do_train", "--dataset_name", "squad")
    for flag in ("--train_file", "--validation_file"):
        at = argv.index(flag)
        del argv[at:at + 2]
    _expect_refusal(argv, r"^--dataset_name squad: cannot load it \(Couldn't reach 'squad' on the Hub "
                          r"\(LocalEntryNotFoundError\)\); without the Hub, give --train_file and --validation_file$",
                    tmp_path)
    assert not (tmp_path / "out").exists()


def test_output_dir_is_required(qa_model_dir, squad_files, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    argv = qa_args(qa_model_dir, squad_files, tmp_path / "out", "--do_eval")
    at = argv.index("--output_dir")
    del argv[at:at + 2]
    _expect_refusal(argv, r"--output_dir is required", tmp_path)
    assert not (tmp_path / "trainer_output").exists()
    # the seed's export command names only --onnx_export_path: the evaluation results go there too
    run_qa.main(argv + ["--do_onnx_export", "--onnx_export_path", str(tmp_path / "exported")])
    assert {"model.onnx", "eval_results.json"} <= set(os.listdir(tmp_path / "exported"))
    assert not (tmp_path / "trainer_output").exists()


def test_existing_output_dir_is_not_clobbered(qa_model_dir, squad_files, tmp_path):
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "model.safetensors").write_text("earlier work")
    _expect_refusal(qa_args(qa_model_dir, squad_files, output_dir, "--do_train"),
                    r"--output_dir .*out already exists and is not empty: use --overwrite_output_dir", output_dir)


def test_unwritable_output_dir_and_file_as_onnx_path(qa_model_dir, squad_files, tmp_path):
    a_file = tmp_path / "a_file"
    a_file.write_text("keep me")
    _expect_refusal(qa_args(qa_model_dir, squad_files, a_file / "out", "--do_train"),
                    r"--output_dir .*a_file/out: cannot write there", tmp_path)
    _expect_refusal(qa_args(qa_model_dir, squad_files, tmp_path / "out", "--do_eval", "--do_onnx_export",
                            "--onnx_export_path", str(a_file)),
                    r"--onnx_export_path .*a_file is an existing file", tmp_path)
    assert a_file.read_text() == "keep me"
    # root may write anywhere by the permission bits, but not below /proc: the folder is tried, and not left
    _expect_refusal(qa_args(qa_model_dir, squad_files, "/proc/sparsebert-out/run", "--do_train"),
                    r"^--output_dir /proc/sparsebert-out/run: cannot create it \(", tmp_path)
    assert not os.path.exists("/proc/sparsebert-out")


def test_max_steps_cuts_the_recipe_short_with_a_warning(qa_model_dir, squad_files, tmp_path, caplog):
    # the usual smoke test: one step of a 2-epoch recipe runs, and the log says the schedule stops there
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(qa_model_dir, squad_files, output_dir, "--do_train", "--nm_prune_config", GMP,
                        "--max_steps", "1"))
    assert json.load(open(output_dir / "trainer_state.json"))["global_step"] == 1
    assert (output_dir / "model.safetensors").is_file()
    assert any("80sparsity2epoch.yaml is cut short: it runs to epoch 2" in r.getMessage()
               and "training stops after 1 (--max_steps)" in as_flags(r.getMessage()) for r in caplog.records)


def test_command_line_gets_one_line_and_exit_status_2(qa_model_dir, squad_files, tmp_path):
    argv = qa_args(qa_model_dir, squad_files, tmp_path / "out", "--do_train", "--nm_prune_config", "nope.yaml")
    env = {k: v for k, v in os.environ.items() if k != "PYTHONWARNINGS"}  # as a user runs it: warnings on
    done = subprocess.run([sys.executable, os.path.join(REPO, "run_qa.py"), *argv], capture_output=True, text=True,
                          cwd=tmp_path, env=env)
    assert done.returncode == 2
    # one line: not even sparseml's pkg_resources deprecation warning before it
    assert done.stderr.splitlines() == ["error: --nm_prune_config nope.yaml: no such file"]
    assert "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp_path)) == []


@pytest.mark.parametrize("flag, value", [("--fsdp", "full_shard"), ("--deepspeed", "ds_config.json")])
def test_sharded_training_is_refused(flag, value, qa_model_dir, squad_files, tmp_path):
    _expect_refusal(qa_args(qa_model_dir, squad_files, tmp_path / "out", "--do_train", flag, value),
                    rf"^{flag} is not supported: sharded training splits each weight across processes and sparseml's "
                    rf"masks would be lost", tmp_path)


def test_doc_stride_is_checked_against_the_questions_in_the_data(qa_model_dir, squad_files, tmp_path):
    """HF's run_qa.py accepts --max_seq_length 128 --doc_stride 64 for ordinary questions; only a question long
    enough to leave no room for that stride makes it wrong."""
    output_dir = tmp_path / "out"
    run_qa.main(qa_args(qa_model_dir, squad_files, output_dir, "--do_eval", "--max_seq_length", "128",
                        "--doc_stride", "64", "--max_query_length", "64"))
    assert (output_dir / "eval_results.json").is_file()
    long_question = tmp_path / "long.jsonl"
    long_question.write_text('{"id": "1", "context": "the cup is red .", "question": "' + "what " * 70 + '?", '
                             '"answers": {"text": ["red"], "answer_start": [11]}}\n')
    _expect_refusal(qa_args(qa_model_dir, {**squad_files, "dev": str(long_question)}, tmp_path / "out2", "--do_eval",
                            "--max_seq_length", "128", "--doc_stride", "64", "--max_query_length", "64"),
                    r"--doc_stride 64 is too large for --max_seq_length 128: the longest evaluation question "
                    r"\(64 tokens, after --max_query_length 64\) leaves 61 context tokens", tmp_path / "out2")


def test_flags_are_checked_before_sparseml_loads(tmp_path):
    """--help and refusals of bad flags answer without loading sparseml (it took half of a refusal's 14 s)."""
    probe = ("import sys, run_qa\n"
             "try:\n    run_qa.main(sys.argv[1:])\nexcept BaseException as stop:\n"
             "    print(type(stop).__name__, 'sparseml' in sys.modules)\n")
    for argv in (["--help"], ["--model_name_or_path", str(tmp_path / "missing"), "--output_dir", str(tmp_path / "o"),
                              "--do_train"]):
        done = subprocess.run([sys.executable, "-c", probe, *argv], capture_output=True, text=True, cwd=REPO,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
        assert done.stdout.strip().splitlines()[-1] in ("SystemExit False", "UsageError False"), done.stdout[-500:]
