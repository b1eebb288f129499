"""The answer probe as a user choice: presets for common answer formats, flags, or a TOML/JSON file.

The probe splices a prefill after the rollout and reads the mass on the answer strings (`tl_isokl.probe`). Which
prefill and which strings depends on how the model answers, so it is a setting of every run (recorded in the
manifest, part of the run identity), not a constant:

    json-think  '\\nI should answer now.</think>{"value": '  -> true / false   (thinks in <think>, answers JSON)
    json        '\\n{"value": '                              -> true / false   (answers JSON, no think block)
    yes-no      '\\nAnswer:'                                  -> " yes"/" Yes" / " no"/" No"

`--probe FILE` holds the same fields: prefill, true (a string or a list of variants), false, think_close ("" for
models without a think block), after_close ("skip" or "keep"). Flags override the preset or file field by field.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Mapping, Sequence

from tl_isokl.errors import IsoKLError, SettingsError
from tl_isokl.probe import PREFILL, THINK_CLOSE, ProbeSpec

PRESETS: dict[str, ProbeSpec] = {
    "json-think": ProbeSpec(),
    "json": ProbeSpec(prefill='\n{"value": ', think_close=""),
    "yes-no": ProbeSpec(prefill="\nAnswer:", true_variants=(" yes", " Yes"), false_variants=(" no", " No"),
                        think_close=""),
}
DEFAULT_PRESET = "json-think"
FIELDS = ("prefill", "true", "false", "think_close", "after_close")


def read_probe_file(path: str | Path) -> dict[str, Any]:
    """The fields of a probe file (.toml or .json); one clear line for anything malformed."""
    p = Path(path)
    if not p.is_file():
        raise IsoKLError(f"probe file {str(p)!r} does not exist; pass a .toml or .json file with prefill, true, false")
    try:
        if p.suffix.lower() == ".toml":
            import tomllib

            data = tomllib.loads(p.read_text(encoding="utf-8"))
        elif p.suffix.lower() == ".json":
            data = json.loads(p.read_text(encoding="utf-8"))
        else:
            raise IsoKLError(f"probe file {str(p)!r}: use a .toml or .json file")
    except (ValueError, UnicodeDecodeError) as e:  # tomllib.TOMLDecodeError and JSONDecodeError are ValueErrors
        raise IsoKLError(f"probe file {str(p)!r} is not valid {p.suffix[1:].upper()}: {e}") from None
    if not isinstance(data, dict):
        raise IsoKLError(f"probe file {str(p)!r} must hold a table/object with {', '.join(FIELDS)}")
    unknown = sorted(set(data) - set(FIELDS))
    if unknown:
        raise IsoKLError(f"probe file {str(p)!r}: unknown field(s) {', '.join(unknown)}; the fields are "
                         f"{', '.join(FIELDS)}")
    return data


def _variants(v: Any, where: str) -> tuple[str, ...]:
    vals = (v,) if isinstance(v, str) else tuple(v) if isinstance(v, (list, tuple)) else None
    if not vals or not all(isinstance(x, str) and x for x in vals):
        raise IsoKLError(f"{where} must be a non-empty string or a list of non-empty strings, got {v!r}")
    return vals


def probe_spec(preset: str | None = None, *, file: str | Path | None = None, prefill: str | None = None,
               true: Sequence[str] | None = None, false: Sequence[str] | None = None,
               think_close: str | None = None) -> ProbeSpec:
    """The probe of a run: a preset (default json-think) or a file, then each given field on top."""
    if preset is not None and file is not None:
        raise SettingsError("--probe-preset and --probe FILE both define the probe; give one of them")
    if preset is not None and preset not in PRESETS:
        raise SettingsError(f"unknown probe preset {preset!r}; use one of {', '.join(PRESETS)}")
    base = PRESETS[preset or DEFAULT_PRESET]
    fields: Mapping[str, Any] = read_probe_file(file) if file is not None else {}
    src = f"probe file {file}" if file is not None else "the probe"
    spec = dict(prefill=base.prefill, true_variants=base.true_variants, false_variants=base.false_variants,
                think_close=base.think_close, after_close=base.after_close)
    if file is not None:  # a file starts from the default preset's think convention unless it says otherwise
        if "prefill" in fields:
            spec["prefill"] = str(fields["prefill"])
        if "true" in fields:
            spec["true_variants"] = _variants(fields["true"], f"{src}: true")
        if "false" in fields:
            spec["false_variants"] = _variants(fields["false"], f"{src}: false")
        if "think_close" in fields:
            spec["think_close"] = str(fields["think_close"])
        if "after_close" in fields:
            spec["after_close"] = str(fields["after_close"])
    if prefill is not None:
        spec["prefill"] = prefill
    if true:
        spec["true_variants"] = _variants(list(true), "--probe-true")
    if false:
        spec["false_variants"] = _variants(list(false), "--probe-false")
    if think_close is not None:
        spec["think_close"] = think_close
    if not spec["prefill"]:
        raise IsoKLError("the probe prefill is empty; pass --probe-prefill TEXT (the text spliced before the answer)")
    return ProbeSpec(**spec)


__all__ = ["PRESETS", "DEFAULT_PRESET", "probe_spec", "read_probe_file", "PREFILL", "THINK_CLOSE"]
