"""A refusal is one line for the user; the cause behind it is one flag (or variable) away, and a failure inside
sparseml is shown as the bug it is, never blamed on the user's recipe."""

import pytest
from sparseml.pytorch.optim import ScheduledModifierManager

from sparsebert.cli import TRACEBACK_VARIABLE, run_cli
from sparsebert.errors import UsageError
from sparsebert.recipe import load_recipe

GMP = """modifiers:
  - !GMPruningModifier
    params: ['re:.*weight']
    init_sparsity: 0.1
    final_sparsity: {final}
    start_epoch: 0.0
    end_epoch: 1.0
    update_frequency: 0.1
"""


def _refuse_from_a_cause():
    try:
        int("ten")
    except ValueError as err:
        raise UsageError("`num_things` ten: not a number") from err  # named as the library names settings


def _run(monkeypatch, capsys, argv, variable=None):
    monkeypatch.setattr("sys.argv", ["run_qa.py", *argv])
    if variable is None:
        monkeypatch.delenv(TRACEBACK_VARIABLE, raising=False)
    else:
        monkeypatch.setenv(TRACEBACK_VARIABLE, variable)
    with pytest.raises(SystemExit) as stopped:
        run_cli(_refuse_from_a_cause)
    assert stopped.value.code == 2
    return capsys.readouterr().err


def test_refusal_is_one_line_by_default(monkeypatch, capsys):
    assert _run(monkeypatch, capsys, ["--log_level", "info"]) == "error: --num_things ten: not a number\n"
    assert _run(monkeypatch, capsys, [], variable="0") == "error: --num_things ten: not a number\n"


@pytest.mark.parametrize("argv, variable", [(["--log_level", "debug"], None), (["--log_level=debug"], None),
                                            ([], "1")])
def test_debug_shows_the_cause(monkeypatch, capsys, argv, variable):
    err = _run(monkeypatch, capsys, argv, variable)
    assert "Traceback" in err and "ValueError: invalid literal for int() with base 10: 'ten'" in err
    assert err.endswith("error: --num_things ten: not a number\n")  # the one line still comes last


def test_settings_sparseml_rejects_are_the_recipes_fault(tmp_path):
    path = tmp_path / "recipe.yaml"
    for final, message in (("1.5", r"final_sparsity value\(s\) must be in the range"),
                           ("abc", "final_sparsity must be of float type")):
        path.write_text(GMP.format(final=final))
        with pytest.raises(UsageError, match=f"invalid modifier settings .*{message}") as refused:
            load_recipe(str(path))
        assert refused.value.__cause__ is not None  # kept for --log_level debug


@pytest.mark.parametrize("bug", [AttributeError("'NoneType' object has no attribute 'params'"),
                                 KeyError("sparsity"),
                                 TypeError("unsupported operand type(s) for +: 'NoneType' and 'float'")])
def test_a_bug_inside_sparseml_is_not_blamed_on_the_recipe(tmp_path, monkeypatch, bug):
    path = tmp_path / "recipe.yaml"
    path.write_text(GMP.format(final="0.8"))

    def failing(*args, **kwargs):
        raise bug

    monkeypatch.setattr(ScheduledModifierManager, "from_yaml", failing)
    with pytest.raises(type(bug)) as raised:
        load_recipe(str(path))
    assert raised.value is bug


def test_the_command_line_names_settings_as_flags_in_our_log_lines_only():
    import logging

    from sparsebert.cli import FlagNames, as_flags

    assert as_flags("pass `recipe_args` or `nm_prune_config`; `Not_a_setting` stays") == \
        "pass --recipe_args or --nm_prune_config; `Not_a_setting` stays"
    ours = logging.LogRecord("sparsebert.trainer", logging.INFO, __file__, 1, "`max_steps` %d cuts it", (5,), None)
    theirs = logging.LogRecord("transformers.trainer", logging.INFO, __file__, 1, "`use_cache` is off", (), None)
    assert FlagNames().filter(ours) and ours.getMessage() == "--max_steps 5 cuts it"
    assert FlagNames().filter(theirs) and theirs.getMessage() == "`use_cache` is off"
