"""The Python versions the stack installs on are stated alike in pyproject.toml, the README and the scripts' own
check, which refuses any other in one line."""

import os
import re
import tomllib

from packaging.specifiers import SpecifierSet

import sparsebert
from conftest import REPO


def test_pyproject_readme_and_the_scripts_name_the_same_python_versions():
    with open(os.path.join(REPO, "pyproject.toml"), "rb") as handle:
        requires = SpecifierSet(tomllib.load(handle)["project"]["requires-python"])
    allowed = [(3, minor) for minor in range(6, 20) if f"3.{minor}" in requires]
    assert allowed == list(sparsebert.SUPPORTED_PYTHON)
    readme = open(os.path.join(REPO, "README.md")).read()
    stated = re.search(r"Python (3\.\d+) or (3\.\d+)", readme)
    assert stated and [tuple(map(int, v.split("."))) for v in stated.groups()] == allowed


def test_an_unsupported_python_is_refused_in_one_line_naming_it_and_why():
    assert sparsebert.unsupported_python((3, 11, 7)) is None
    message = sparsebert.unsupported_python((3, 12, 1))
    assert message.startswith("error: Python 3.12 is not supported: sparseml 1.8.0") and "\n" not in message
    assert "3.10 or 3.11" in message
