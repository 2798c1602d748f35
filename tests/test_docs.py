"""The docs say what the code and the results say: every generated section is what its JSON gives, and every
command names a script, flags and recipes that exist."""

import glob
import os
import re
import shlex
import shutil
import sys

import pytest

from conftest import REPO

PAGES = sorted([os.path.join(REPO, "README.md"), os.path.join(REPO, "bench", "README.md")]
               + glob.glob(os.path.join(REPO, "docs", "*.md")))


def test_every_generated_section_is_what_its_json_gives(tmp_path):
    sys.path.insert(0, REPO)
    from bench.report import regenerate_all

    for page in PAGES:
        copy = tmp_path / os.path.relpath(page, REPO)
        copy.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(page, copy)
    results = tmp_path / "bench" / "results"
    results.mkdir(parents=True, exist_ok=True)
    for path in glob.glob(os.path.join(REPO, "bench", "results", "*.json")):
        shutil.copyfile(path, results / os.path.basename(path))
    regenerate_all(str(results), str(tmp_path))
    stale = [os.path.relpath(page, REPO) for page in PAGES
             if (tmp_path / os.path.relpath(page, REPO)).read_text() != open(page).read()]
    assert stale == [], f"generated sections differ from their JSON in {stale}: run python bench/report.py"
    assert sum(open(page).read().count(":start -->") for page in PAGES) >= 8  # the sections are there to check


def _commands(text: str) -> list[list[str]]:
    """The `python ...` commands of a page's bash blocks, continuation lines joined, split at && and |."""
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", text, re.S):
        joined = re.sub(r"\\\n\s*", " ", block)
        for line in joined.splitlines():
            for part in re.split(r"&&|\|\||;|\|", line.split(" #")[0]):
                try:
                    words = shlex.split(part)
                except ValueError:
                    continue
                if words and re.fullmatch(r"(\S*/)?python3?", words[0]) and len(words) > 1:
                    commands.append(words[1:])
    return commands


def _script_flags(words: list[str]) -> tuple[str, set] | None:
    """The script a command runs and the flags it accepts (None: a module or tool not ours)."""
    if words[0] == "-m":
        if not words[1].startswith("sparsebert."):
            return None
        path = os.path.join(REPO, *words[1].split(".")) + ".py"
    else:
        path = os.path.join(REPO, words[0])
    assert os.path.isfile(path), f"no script {words[0]}"
    source = open(path).read()
    if "ARGUMENT_CLASSES" in source:  # our scripts, and an own script built like them: HfArgumentParser's flags
        import importlib.util

        from transformers import HfArgumentParser

        spec = importlib.util.spec_from_file_location(os.path.basename(path)[:-3], path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        parser = HfArgumentParser(module.ARGUMENT_CLASSES)
        return path, {option for option in parser._option_string_actions if option.startswith("--")}
    return path, set(re.findall(r"add_argument\(\s*\"(--[a-z0-9_]+)\"", source))


@pytest.mark.parametrize("page", PAGES, ids=lambda p: os.path.relpath(p, REPO))
def test_every_command_in_the_docs_names_a_script_flags_and_recipes_that_exist(page):
    text = open(page).read()
    for words in _commands(text):
        found = _script_flags(words)
        if found is None:
            continue
        script, flags = found
        for flag in (w.split("=")[0] for w in words if w.startswith("--")):
            assert flag in flags, f"{os.path.relpath(page, REPO)}: {os.path.basename(script)} has no {flag}"
    for recipe in set(re.findall(r"(?<![\w/-])recipes/[\w.{},-]+\.(?:yaml|md)", text)):  # ours, not sparseml's
        if "{" in recipe:  # a family written as recipes/{80,90}sparsity2epoch.yaml
            continue
        assert os.path.isfile(os.path.join(REPO, recipe)), f"{os.path.relpath(page, REPO)} names {recipe}"


def test_the_command_check_sees_a_flag_that_does_not_exist():
    words = _commands("```bash\npython run_qa.py --model_name_or_path m --no_such_flag 1\n```")[0]
    script, flags = _script_flags(words)
    assert "--model_name_or_path" in flags and "--no_such_flag" not in flags
