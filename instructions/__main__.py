"""``python -m instructions build ...`` -> ``instructions.cli.main``; ``near-duplicates DATASET`` ->
leak check."""

from __future__ import annotations

import sys

from instructions.cli import main

if __name__ == "__main__":
    argv = sys.argv[1:]
    if argv[:1] == ["near-duplicates"]:
        from instructions.near_duplicates import main as near_duplicates_main

        raise SystemExit(near_duplicates_main(argv[1:]))
    if argv[:1] == ["build"]:
        argv = argv[1:]
    raise SystemExit(main(argv))
