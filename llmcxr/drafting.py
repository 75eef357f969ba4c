"""Draft tokens for speculative decoding of answers: a bank of the model's own earlier answers.

Why: a report is ~10 tokens and each costs one decode step that mostly waits on reading the
weights; a forward over a few tokens costs about as much as over one. The model's reports are
made of a few stock phrases, so after an answer's first token or two the bank usually knows how
it goes on. `llmcxr.decoding.generate_text` runs the guessed tokens through the model in one
forward and keeps each with the model's own probability (speculative sampling, Leviathan et al.
2023; Chen et al. 2023), so answers follow exactly the model's distribution whatever the bank
holds: a poor bank only costs speed. transformers' prompt-lookup decoding drafts from the prompt;
a report does not repeat its prompt, so this drafts from the bank.

The bank is a JSON file of token id lists in the model folder (`BANK_FILE`), written by
`python -m llmcxr.drafting` from the model's reports on real films; it is read as untrusted
input (`PhraseDrafts.load`).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from collections.abc import Sequence
from pathlib import Path

from cxrcommon.files import atomic_write_text

BANK_FILE = "drafts.json"
"""The bank's file name in a model folder."""
FORMAT = "llmcxr-drafts"
MAX_BANK_BYTES = 4 * 1024 * 1024
"""A bank file above this size is refused (the shipped one is a few KiB)."""
MAX_CONTEXT = 2
"""Drafts are keyed by the answer's last 2 tokens, else its last one."""
MAX_DRAFT = 8
"""The most tokens drafted at once: a longer forward starts to cost more than it saves."""


class PhraseDrafts:
    """For each 1- and 2-token context seen in the bank, the continuation that followed it most
    often (up to `MAX_DRAFT` tokens; ties to the one seen first)."""

    def __init__(self, sequences: Sequence[Sequence[int]], source: str = "") -> None:
        self.sequences = [tuple(int(i) for i in sequence) for sequence in sequences]
        self.source = source
        seen: dict[tuple[int, ...], Counter[tuple[int, ...]]] = defaultdict(Counter)
        for ids in self.sequences:
            for end in range(1, len(ids)):
                follow = ids[end : end + MAX_DRAFT]
                for width in range(1, MAX_CONTEXT + 1):
                    if end >= width:
                        seen[ids[end - width : end]][follow] += 1
        self.table = {key: counts.most_common(1)[0][0] for key, counts in seen.items()}

    def propose(self, answer: Sequence[int], limit: int) -> list[int]:
        """Up to `limit` tokens likely to follow `answer` (the ids so far); [] when no context
        of it is in the bank."""
        if limit <= 0:
            return []
        for width in range(min(MAX_CONTEXT, len(answer)), 0, -1):
            follow = self.table.get(tuple(answer[-width:]))
            if follow is not None:
                return list(follow[:limit])
        return []

    @classmethod
    def load(cls, path: Path, vocab_size: int) -> PhraseDrafts:
        """Read a bank file; ValueError naming the file when it is not a bank of token ids below
        `vocab_size` (a bad bank is refused, never half-used)."""
        size = path.stat().st_size
        if size > MAX_BANK_BYTES:
            raise ValueError(f"{path}: {size} bytes, more than a draft bank's {MAX_BANK_BYTES}")
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise ValueError(f"{path} is not a JSON draft bank: {err}") from err
        if not isinstance(data, dict) or data.get("format") != FORMAT:
            raise ValueError(f"{path} is not a draft bank (expected format {FORMAT!r})")
        sequences = data.get("sequences")
        if not isinstance(sequences, list) or not all(
            isinstance(s, list) and all(type(i) is int and 0 <= i < vocab_size for i in s)
            for s in sequences
        ):
            raise ValueError(f"{path}: 'sequences' must be lists of token ids in [0, {vocab_size})")
        source = data.get("source")
        return cls(sequences, source if isinstance(source, str) else "")


def save_bank(path: Path, sequences: Sequence[Sequence[int]], source: str) -> None:
    """Write a bank file atomically (`cxrcommon.files.atomic_write_text`)."""
    data = {"format": FORMAT, "source": source, "sequences": [list(s) for s in sequences]}
    atomic_write_text(path, json.dumps(data, separators=(",", ":")) + "\n")


def main(argv: list[str] | None = None) -> int:
    """Write a model folder's draft bank from its reports on the films of a dataset split."""
    parser = argparse.ArgumentParser(
        prog="python -m llmcxr.drafting",
        description="Write <model>/drafts.json: the model's reports on a dataset split's films, "
        "as token ids (speculative decoding's drafts; answers keep the model's distribution).",
    )
    parser.add_argument("--model", type=Path, required=True, help="model folder")
    parser.add_argument("--data", type=Path, required=True, help="instruction dataset folder")
    parser.add_argument("--split", default="val", help="which split's films (default: val)")
    parser.add_argument("--limit", type=int, default=400, help="at most this many films")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from llmcxr.evaluation.data import EvalSplit
    from llmcxr.pipeline import LLMCXR

    llm = LLMCXR.from_pretrained(args.model)
    images = [path for _, path in sorted(EvalSplit(args.data, split=args.split).images_of_split())]
    images = images[: args.limit]
    if not images:
        parser.error(f"no films in split {args.split!r} of {args.data}")
    reports = llm.generate_report(images, seed=args.seed, draft=False)
    # As the model writes them: the report, then the end marker that closes it.
    sequences = [
        llm.text_tokenizer(llm.prompt_format.render_response(report), add_special_tokens=False)[
            "input_ids"
        ]
        for report in reports
    ]
    out = args.model / BANK_FILE
    save_bank(out, sequences, f"reports on {len(images)} {args.split} films, seed {args.seed}")
    print(f"wrote {out}: {len(sequences)} reports", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
