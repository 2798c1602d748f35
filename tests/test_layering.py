"""The library (sparsebert/) sits under the command line: no library module imports the CLI layer, so a Python
caller gets domain errors and settings by their parameter names, and the scripts alone speak flags."""

import ast
import glob
import os

from conftest import REPO

CLI_MODULES = {"sparsebert.cli"}


def _imports(path) -> set:
    tree = ast.parse(open(path).read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def test_no_library_module_imports_the_command_line_layer():
    library = [p for p in glob.glob(os.path.join(REPO, "sparsebert", "*.py")) if not p.endswith("cli.py")]
    assert len(library) > 10
    offenders = {os.path.basename(p): sorted(_imports(p) & CLI_MODULES) for p in library}
    assert {name: found for name, found in offenders.items() if found} == {}
    # the check itself sees an import of the CLI where there is one
    assert _imports(os.path.join(REPO, "run_qa.py")) & CLI_MODULES
