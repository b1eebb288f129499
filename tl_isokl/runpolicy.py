"""Where a command writes, and whether it may: the default run folder and the resume / refuse rules.

The run directory's layout is `tl_isokl.rundir`; this is its policy, in one place for `calibrate`, `sweep` and
Python callers alike:

* **Default folder**: ``runs/<kind>-<model>-<method>-L<layer>-w<window>-<hash>``, the hash taken over every setting
  that changes the results (`request`), so two different experiments never share a default folder and rerunning
  the same command finds, and resumes, its own.
* **Before the model loads** (`open_run`): the folder must be writable; a damaged manifest, a calibration written
  before identities existed, or a damaged stored vector fail now, as one line.
* **Which calibration** (`choose_calibration`): an explicit `--calibration` file must have been made for this model,
  vector and positions; one found in the folder must match every setting; otherwise calibrate. Unconverged ones
  are refused unless allowed.
* **Writing a calibration** (`check_calibration_target`): never into a folder whose cells were made with another one.
* `--fresh` removes exactly the files the layout owns (`identity.clear_run`), nothing else.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tl_isokl.identity import (APPLIES, FIX_RUN, IdentityError, check_calibration, check_converged, clear_run,
                               reuse_vector)
from tl_isokl.files import check_writable_dir, sha256_bytes, sha256_json
from tl_isokl.rundir import RunDir

RUNS = Path("runs")


def model_spec(model_name: str | None) -> str:
    """The model as it will be recorded, known before loading: the embedded name, an absolute folder, or a hub
    name (local folders are resolved, so a run made from one working directory is found from another)."""
    from tl_isokl.model import EMBEDDED_NAME

    if model_name is None:
        return EMBEDDED_NAME
    p = Path(str(model_name)).expanduser()
    return str(p.resolve()) if p.exists() else str(model_name)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("_") or "model"


def model_slug(name: str) -> str:
    """A model name in a folder name: a local folder by its last component, a hub name owner_name."""
    return _slug(Path(name).name if Path(name).is_absolute() else name)


def default_run_path(kind: str, spec: str, tag: str, layer: int | None, window: int, request: Mapping[str, Any]
                     ) -> Path:
    """runs/<kind>-<model>-<tag>-L<layer>-w<window>-<8 hex of sha256(request)>."""
    return RUNS / (f"{kind}-{model_slug(spec)}-{_slug(tag)}-L{'mid' if layer is None else layer}-w{window}-"
                   f"{sha256_json(dict(request))[:8]}")


def file_sha(path: str | Path | None) -> str | None:
    """Hash of a file's bytes (for default folder names and records), None for no file."""
    return None if path is None else sha256_bytes(Path(path).read_bytes())


@dataclass
class OpenRun:
    """What a folder already holds, read and checked before the model loads (all None with `fresh`)."""

    rd: RunDir
    manifest: dict[str, Any] | None
    calibration: dict[str, Any] | None
    vector: Any | None  # SteeringVector
    fresh: bool


def open_run(out: str | Path, *, fresh: bool = False, flag: str = "--out", explicit_calibration: bool = False,
             load_vector: bool = True) -> OpenRun:
    """Check `out` is writable and read what it holds; damaged or pre-identity files fail now, in one line.

    With `explicit_calibration` (the user passed one) a calibration stored here is not the one used, so it is not
    checked now; the run directory's own identity check still applies when the sweep writes.
    """
    check_writable_dir(Path(out), what=flag)
    rd = RunDir(out)
    if fresh:
        return OpenRun(rd, None, None, None, True)
    manifest = rd.read_manifest() if rd.manifest_path.is_file() else None
    cal = rd.read_calibration()
    if cal is not None and not explicit_calibration:
        check_calibration(cal, {}, source=str(rd.calibration_path), fix=FIX_RUN)  # written before identities?
    vector = None
    if load_vector and rd.vector_path.is_file():
        from tl_isokl.vector import SteeringVector

        vector = SteeringVector.load(rd.vector_path)
    return OpenRun(rd, manifest, cal, vector, False)


def check_calibration_target(state: OpenRun) -> None:
    """`calibrate` may write into an empty folder or over a calibration, never into a sweep's run directory."""
    m = state.manifest
    if m is not None and m.get("command") != "calibrate":
        raise IdentityError(f"{state.rd.path} holds a {m.get('command') or 'tl-isokl'} run; writing a calibration "
                            f"there would change the calibration its cells were made with; {FIX_RUN}")


def resolve_vector(state: OpenRun, requested, *, extracted: bool):
    """The vector to use: the one stored in the folder when it is the requested one (resumption stays bit-exact),
    the requested one in an empty folder, IdentityError for another vector."""
    if state.vector is None:
        return requested
    return reuse_vector(state.vector, requested, source=str(state.rd.path), extracted=extracted)


def choose_calibration(state: OpenRun, wanted: Mapping[str, Any], *, explicit: Mapping[str, Any] | None = None,
                       explicit_source: str | None = None, allow_unconverged: bool = False,
                       explicit_fix: str = "pass a calibration made for this vector and model, or drop "
                                           "--calibration to calibrate here") -> Mapping[str, Any] | None:
    """The calibration a sweep uses, or None to calibrate now (see the module docstring for the rules)."""
    if explicit is not None:
        check_calibration(explicit, wanted, source=str(explicit_source), fields=APPLIES, fix=explicit_fix)
        return explicit
    if state.calibration is not None:
        check_calibration(state.calibration, wanted, source=str(state.rd.calibration_path), fix=FIX_RUN)
        check_converged(state.calibration, allow=allow_unconverged, source=str(state.rd.calibration_path))
        return state.calibration
    return None


def check_recalibration(state: OpenRun, wanted: Mapping[str, Any]) -> None:
    """`calibrate` over a calibration made with other settings is refused (unless --fresh)."""
    if state.calibration is not None:
        check_calibration(state.calibration, wanted, source=str(state.rd.calibration_path), fix=FIX_RUN)


def start_fresh(state: OpenRun) -> list[Path]:
    """With --fresh: remove the folder's tl-isokl files (only those; see `RunDir.owned_files`)."""
    return clear_run(state.rd.path) if state.fresh else []
