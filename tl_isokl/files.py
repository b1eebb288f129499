"""Atomic file writes and content hashes: the only way this package writes to disk.

Why atomic: a sweep can be killed at any moment and resumed; a half-written JSON file would be taken for a
finished cell. Everything is written to a temp file in the same folder, flushed, fsynced, then `os.replace`d.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
import os
import tempfile
from pathlib import Path
from typing import Any, Iterable

from tl_isokl.errors import IsoKLError



@functools.lru_cache(maxsize=1)
def _umask() -> int:
    """The process umask, read once at the first write (reading it means setting it: never at import time)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp creates 0600; published files should be readable
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    return atomic_write_bytes(path, text.encode("utf-8"))


def _clean(obj: Any) -> Any:
    """JSON has no NaN/inf: write them as null so every reader (json, pandas, jq) parses the file."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {str(k): _clean(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_clean(v) for v in obj]
    return obj


def dumps(obj: Any, indent: int | None = 1) -> str:
    return json.dumps(_clean(obj), indent=indent, allow_nan=False)


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, dumps(obj) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: Iterable[Any]) -> Path:
    return atomic_write_text(path, "".join(dumps(r, indent=None) + "\n" for r in rows))


def csv_text(rows: Iterable[dict[str, Any]], columns: Iterable[str] | None = None) -> str:
    """CSV of dict rows (floats as %.6g, columns = `columns` or the first row's keys; other keys ignored). No rows
    and no columns: the empty string (no header)."""
    import csv
    import io

    rows = list(rows)
    cols = list(columns) if columns is not None else (list(rows[0]) if rows else [])
    buf = io.StringIO()
    if cols:
        w = csv.DictWriter(buf, fieldnames=cols, extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return buf.getvalue()


def _read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise IsoKLError(f"{path}: not UTF-8 text (byte {e.start}); the file is damaged or not a tl-isokl "
                         f"file") from None
    except OSError as e:
        raise IsoKLError(f"{path}: cannot read it ({e.strerror or type(e).__name__})") from None


def read_json(path: str | os.PathLike, *, kind: type | None = None) -> Any:
    """Parse a JSON file. Malformed content is one IsoKLError naming the file, line and column (the CLI prints it
    as one line, no traceback); with `kind` (e.g. dict), a top-level value of another type is refused too."""
    p = Path(path)
    try:
        obj = json.loads(_read_text(p))
    except json.JSONDecodeError as e:
        raise IsoKLError(f"{p}: not valid JSON ({e.msg} at line {e.lineno} column {e.colno}); the file is "
                         f"damaged or not a tl-isokl file") from None
    if kind is not None and not isinstance(obj, kind):
        raise IsoKLError(f"{p}: expected a JSON {'object' if kind is dict else kind.__name__}, found "
                         f"{type(obj).__name__}; the file is damaged or not a tl-isokl file")
    return obj


def read_jsonl(path: str | os.PathLike) -> list[Any]:
    """Parse a JSON-lines file (blank lines skipped); a malformed line is one IsoKLError naming file:line."""
    p = Path(path)
    out = []
    for n, line in enumerate(_read_text(p).splitlines(), 1):
        if not line.strip():
            continue
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError as e:
            raise IsoKLError(f"{p}:{n}: not valid JSON ({e.msg} at column {e.colno}); the file is damaged (a "
                             f"killed write?) - delete it to recompute it") from None
    return out


def check_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Fail now, not after minutes of compute, if `path` cannot become a folder we can write files into.

    The folder itself is not created. The nearest existing ancestor must be a folder in which a file can be
    created: a probe file is made there and removed at once (os.access is not enough: root passes it on a
    read-only mount).
    """
    p = Path(path)
    probe = p
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise IsoKLError(f"{what} {str(p)!r} cannot be created: {str(probe)!r} is a file, not a folder")
    try:
        fd, tmp = tempfile.mkstemp(prefix=".tl-isokl-write-test.", dir=probe)
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise IsoKLError(f"{what} {str(p)!r} is not writable: cannot create files in {str(probe)!r} "
                         f"({e.strerror or type(e).__name__})") from None
    return p


def sha256_bytes(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def sha256_json(obj: Any) -> str:
    """Hash of a JSON-able object in canonical form (sorted keys), e.g. a prompt list."""
    return sha256_bytes(json.dumps(_clean(obj), sort_keys=True, separators=(",", ":")).encode("utf-8"))
