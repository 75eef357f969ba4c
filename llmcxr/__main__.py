"""`python -m llmcxr`: the same as the `llmcxr` console script."""

import sys

from llmcxr.cli import main

sys.exit(main())
