"""Fail when a committed notebook carries outputs or execution counts."""

from __future__ import annotations

import json
import sys


def main(paths: list[str]) -> int:
    dirty = []
    for path in paths:
        with open(path, encoding="utf-8") as handle:
            notebook = json.load(handle)
        for index, cell in enumerate(notebook.get("cells", [])):
            if cell.get("outputs") or cell.get("execution_count") is not None:
                dirty.append(f"{path}: cell {index} has outputs; clear them before committing")
    print("\n".join(dirty) or f"{len(paths)} notebooks committed without outputs")
    return 1 if dirty else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
