"""Result files that are never half written."""

import json
import os


def write_json(path: str, data):
    """Write JSON whole or not at all: to a temporary file, then renamed over the target."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as handle:
        json.dump(data, handle, indent=2, sort_keys=False)
        handle.write("\n")
    os.replace(tmp, path)
