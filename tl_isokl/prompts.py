"""Read prompt files: the one way the CLI and the library take user prompts from disk.

Two formats, chosen by extension:

* ``.txt``: one prompt per line; blank lines are skipped. Prompts often need line breaks (chat framing such as
  ``User: ...\\nAssistant:``), so the escapes ``\\n``, ``\\t`` and ``\\\\`` (a literal backslash) are decoded;
  nothing else is touched, and the line is otherwise kept as written (leading/trailing spaces matter to the
  tokenizer and are kept; only the line terminator is removed).
* ``.jsonl``: one JSON object per non-blank line with a non-empty string field ``"prompt"`` (other fields are
  ignored); JSON's own escapes apply.

Every problem is one `IsoKLError` line naming the file (and line) and the fix.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

from tl_isokl.errors import IsoKLError

FORMATS = (".txt", ".jsonl")
_ESCAPE = re.compile(r"\\(.)")
_ESCAPES = {"n": "\n", "t": "\t", "\\": "\\"}


def unescape_line(line: str) -> str:
    r"""Decode ``\n``, ``\t`` and ``\\``; any other backslash pair is left exactly as written."""
    return _ESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(0)), line)


def read_prompts(path: str | os.PathLike) -> list[str]:
    """Prompts from a ``.txt`` (one per line, ``\\n`` escapes) or ``.jsonl`` (``{"prompt": ...}``) file."""
    p = Path(path)
    if not p.exists():
        raise IsoKLError(f"prompt file {str(p)!r} does not exist; pass a .txt (one prompt per line) or .jsonl file")
    if not p.is_file():
        raise IsoKLError(f"prompt file {str(p)!r} is not a file; pass a .txt or .jsonl file")
    ext = p.suffix.lower()
    if ext not in FORMATS:
        raise IsoKLError(f"prompt file {str(p)!r} has extension {ext or '(none)'!r}; use .txt (one prompt per "
                         f"line) or .jsonl (one {{\"prompt\": ...}} object per line)")
    try:
        text = p.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IsoKLError(f"prompt file {str(p)!r} is not UTF-8 text (byte {e.start}); re-save it as UTF-8") from None
    lines = text.splitlines()
    prompts = _parse_txt(lines) if ext == ".txt" else _parse_jsonl(p, lines)
    if not prompts:
        raise IsoKLError(f"prompt file {str(p)!r} has no prompts; write one prompt per line")
    return prompts


def _parse_txt(lines: list[str]) -> list[str]:
    return [unescape_line(line) for line in lines if line.strip()]


def _parse_jsonl(p: Path, lines: list[str]) -> list[str]:
    out = []
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as e:
            raise IsoKLError(f"{p}:{n}: not valid JSON ({e.msg}); each line must be an object like "
                             f"{{\"prompt\": \"...\"}}") from None
        if not isinstance(row, dict) or not isinstance(row.get("prompt"), str):
            raise IsoKLError(f"{p}:{n}: no string field \"prompt\"; each line must be an object like "
                             f"{{\"prompt\": \"...\"}}")
        if not row["prompt"].strip():
            raise IsoKLError(f"{p}:{n}: the prompt is empty; remove the line or give it text")
        out.append(row["prompt"])
    return out
