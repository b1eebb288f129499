"""The run directory: the one place a sweep's results live, readable with json/csv/numpy alone.

Layout (all JSON is UTF-8, NaN written as null)::

    RUN/
      manifest.json          what was run: model, revision, dtype, layer, method, hashes, seed, versions, argv
      calibration.json       c*, the statistic, converged flag, round-by-round history
      vector.safetensors     the steering vector used (safetensors + JSON metadata, never pickle)
      cells/alpha=<a>.jsonl  one Trajectory per line (see tl_isokl.records); a file exists only once its
                             alpha cell finished, which is what makes `sweep` resumable
      forks.csv              row, prompt_id, alpha, t, pmass, p_true, alive, death interval (derived)
      summary.csv            per alpha: n, died, censored, KL p50/p95/max, median death token (derived; an
                             empty cell = the median was not reached, so the column stays numeric)
      report.md              `tl-isokl report`: identity, calibration, survival and KL tables, caveats
      report.html            the same as one self-contained page (figures inline, opens offline)
      figures/               PNGs drawn by `tl-isokl plot` from the files above
      inspect/               `tl-isokl inspect`: index.html, trace-r<row>.html, deaths.json / deaths.csv
      threshold=<v>/         report.md, figures/, inspect/ re-derived at another --threshold (never overwriting
                             the run's own)

Every one of these names is known here and nowhere else: other modules ask `RunDir` for paths.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import platform
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tl_isokl.errors import RunDirError
from tl_isokl.files import atomic_write_json, atomic_write_jsonl, read_json, read_jsonl
from tl_isokl.records import Trajectory

MANIFEST = "manifest.json"
CALIBRATION = "calibration.json"
CALIBRATION_NEG = "calibration_neg.json"  # two-sided runs: the calibration of -v, for negative alphas
VECTOR = "vector.safetensors"
CELLS = "cells"
FORKS = "forks.csv"
SUMMARY = "summary.csv"
REPORT = "report.md"
REPORT_HTML = "report.html"  # the report as one self-contained page (tl_isokl.report.write_report_html)
FIGURES_DIR = "figures"
FIGURES = {
    "spaghetti_raw": "spaghetti_raw.png",
    "spaghetti_normalised": "spaghetti_normalised.png",
    "survival": "survival.png",
    "dose_response": "dose_response.png",  # the calibration's history, log-log, with the c^2 reference
}
INSPECT_DIR = "inspect"
INSPECT_INDEX, DEATHS_JSON, DEATHS_CSV, HTML_BUNDLE = "index.html", "deaths.json", "deaths.csv", "circuitsvis.iife.js"
INSPECT_FILES = (INSPECT_INDEX, "trace-r*.html", DEATHS_JSON, DEATHS_CSV, HTML_BUNDLE)


def trace_page(row: int) -> str:
    """File name of one dead trace's inspect page (matches the "trace-r*.html" pattern above)."""
    return f"trace-r{row:04d}.html"


def alpha_key(alpha: float) -> str:
    """Stable file-name form of an alpha: 0.25 -> '0.25', 1.0 -> '1'."""
    return f"{float(alpha):g}"


def package_version() -> str:
    try:
        from importlib.metadata import version

        return version("tl-isokl")
    except Exception:  # running from a source tree that was not installed
        return "0+unknown"


def environment() -> dict[str, Any]:
    """Versions that change numbers: recorded in every manifest.

    From the installed distributions' metadata (importlib.metadata), not `module.__version__`: transformer_lens
    4.x has no `__version__`, which used to be recorded as "unknown". None = not installed.
    """
    from importlib.metadata import PackageNotFoundError, version

    env: dict[str, Any] = {"python": platform.python_version(), "platform": platform.platform()}
    for key, dist in (("torch", "torch"), ("transformers", "transformers"), ("transformer_lens", "transformer-lens"),
                      ("numpy", "numpy")):
        try:
            env[key] = version(dist)
        except PackageNotFoundError:
            env[key] = None
    return env


def _now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


_DRIVER: dict[str, Any] = {}


@contextlib.contextmanager
def driver_command(argv: list[str], cwd: str):
    """While a worker (a Ray task) writes cells for a driver elsewhere, the manifests it writes record the
    driver's command line and working directory: the command a researcher ran, not the worker's."""
    old = dict(_DRIVER)
    _DRIVER.update(argv=list(argv), cwd=str(cwd))
    try:
        yield
    finally:
        _DRIVER.clear()
        _DRIVER.update(old)


def _argv() -> list[str]:
    return list(_DRIVER.get("argv", sys.argv))


def history_entry(command: str, **fields: Any) -> dict[str, Any]:
    """One command that wrote into a folder: its command line, working directory, time and versions."""
    return {"command": command, "argv": _argv(), "cwd": _DRIVER.get("cwd") or str(Path.cwd()), "time": _now(),
            "package_version": package_version(), "environment": environment(), **fields}


def base_manifest(command: str, *, history: dict[str, Any] | None = None, **fields: Any) -> dict[str, Any]:
    """A new manifest; `history` = extra fields of this command's history entry (e.g. the cells it wrote)."""
    return {
        "command": command,
        "argv": _argv(),
        "package_version": package_version(),
        "created": _now(),
        "environment": environment(),
        **fields,
        "history": [history_entry(command, **(history or {}))],
    }


def merge_manifest(old: dict[str, Any] | None, new: dict[str, Any]) -> dict[str, Any]:
    """The manifest to write when a command writes into a folder that already has one: the new fields, but the
    original `created`/`argv`/`environment` and the old `history` followed by the new entries. Resuming must not
    erase which command lines produced the cells already on disk."""
    if not old:
        return new
    out = dict(new)
    for k in ("created", "argv", "environment", "package_version"):
        if k in old:
            out[k] = old[k]
    hist = old.get("history")
    if not isinstance(hist, list):  # a manifest from before the history list: its one command line
        hist = [{"command": old.get("command"), "argv": old.get("argv"), "time": old.get("created"),
                 "package_version": old.get("package_version"), "environment": old.get("environment")}]
    out["history"] = [*hist, *new.get("history", [])]
    return out


@dataclass(frozen=True)
class Manifest:
    """What one command wrote into a run directory: the typed core every run records, plus that command's own
    settings (a sweep's alphas, threshold, probe and identity; a calibration's target and tolerance).

    Built by `Manifest.of` and written by `RunDir.record`, the only way a manifest reaches disk: `record` keeps
    the original creation fields and appends this command to the history, so a resumed run's manifest still
    says which command lines made the cells already on disk.
    """

    command: str
    model: str | None
    model_path: str | None
    revision: str | None
    dtype: str | None
    device: str | None
    layer: int
    method: str
    gate: dict[str, Any] | None
    vector_sha256: str
    prompts_sha256: str | None
    n_prompts: int
    window: int
    seed: int
    positions: str
    settings: dict[str, Any] = field(default_factory=dict)
    history: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def of(cls, command: str, model, vector, prompts_sha256: str | None, n_prompts: int, *, window: int, seed: int,
           positions: str, history: dict[str, Any] | None = None, **settings: Any) -> "Manifest":
        """The manifest of `command` run with this model and vector (model identity from `model.model_info`)."""
        from tl_isokl.model import model_info

        info = model_info(model)
        return cls(command=command, model=info.get("name"), model_path=info.get("path"),
                   revision=info.get("revision"), dtype=info.get("dtype"), device=info.get("device"),
                   layer=int(vector.layer), method=vector.method,
                   gate=vector.gate.to_dict() if vector.gate else None, vector_sha256=vector.sha256,
                   prompts_sha256=prompts_sha256, n_prompts=int(n_prompts), window=int(window), seed=int(seed),
                   positions=positions, history=dict(history or {}),
                   # how the forwards ran (tl_isokl.acceleration): recorded, not identity (numbers agree to ~1e-5)
                   settings={"attention": info.get("attention"), "fast_path": info.get("fast_path"), **settings})

    def to_dict(self) -> dict[str, Any]:
        core = {k: getattr(self, k) for k in ("model", "model_path", "revision", "dtype", "device", "layer",
                                              "method", "gate", "vector_sha256", "prompts_sha256", "n_prompts",
                                              "window", "seed", "positions")}
        return base_manifest(self.command, history=self.history, **core, **self.settings)


@dataclass
class Run:
    """A loaded run directory."""

    path: Path
    manifest: dict[str, Any]
    calibration: dict[str, Any] | None
    trajectories: list[Trajectory] = field(default_factory=list)

    @property
    def threshold(self) -> float:
        return float(self.manifest.get("threshold", 0.75))

    @property
    def window(self) -> int:
        return int(self.manifest["window"])

    @property
    def alphas(self) -> list[float]:
        return sorted({t.alpha for t in self.trajectories})

    def by_alpha(self) -> dict[float, list[Trajectory]]:
        out: dict[float, list[Trajectory]] = {a: [] for a in self.alphas}
        for t in self.trajectories:
            out[t.alpha].append(t)
        return out

    # ------------------------------------------------------------------------------ notebooks and data frames

    def _died(self) -> dict[float, tuple[int, int]]:
        from tl_isokl.records import fate

        return {a: (sum(fate(t, self.threshold).died for t in ts), len(ts)) for a, ts in self.by_alpha().items()}

    def __repr__(self) -> str:
        m, cal = self.manifest, self.calibration or {}
        c = cal.get("c_star")
        c_text = f"{c:.4g}" if isinstance(c, (int, float)) else "?"
        died = ", ".join(f"{a:g}: {d}/{n}" for a, (d, n) in self._died().items())
        gate = f", gate={self._gate_text()!r}" if m.get("gate") else ""
        return (f"Run({str(self.path)!r}, model={m.get('model')!r}, method={m.get('method')!r}{gate}, "
                f"layer={m.get('layer')}, c*={c_text}, window={m.get('window')}, threshold={self.threshold:g}, "
                f"{len(self.trajectories)} trajectories, died by alpha {{{died}}})")

    def _gate_text(self) -> str:
        g = self.manifest.get("gate")
        return f"{g.get('kind')}:{g.get('tau'):g}" if isinstance(g, dict) and isinstance(g.get("tau"), (int, float)) \
            else str(g)

    def to_pandas(self) -> dict[str, Any]:
        """{"summary": one row per alpha (summary.csv's columns), "forks": one row per probed fork (forks.csv's
        columns)} as pandas DataFrames, computed from the loaded trajectories at the run's threshold. Needs pandas
        (imported here, not by tl_isokl)."""
        import pandas as pd

        from tl_isokl.sweep import summary_rows

        return {"summary": pd.DataFrame(summary_rows(self)), "forks": pd.DataFrame(self.fork_rows())}

    def fork_rows(self) -> list[dict[str, Any]]:
        """forks.csv as dicts: row, prompt_id, alpha, t, pmass, p_true, alive, and the trace's death interval
        (last_alive_fork, death_fork], None when it did not die."""
        from tl_isokl.records import fate

        out = []
        for row, t in enumerate(self.trajectories):
            fa = fate(t, self.threshold)
            lo, hi = fa.interval if fa.died else (None, None)
            for f in t.forks:
                out.append({"row": row, "prompt_id": t.prompt_id, "alpha": t.alpha, "t": f.t, "pmass": f.pmass,
                            "p_true": f.p_true, "alive": bool(f.alive(self.threshold)), "last_alive_fork": lo,
                            "death_fork": hi})
        return out

    def figures_png(self, keys: tuple[str, ...] = ("survival", "spaghetti_raw")) -> dict[str, bytes]:
        """PNG bytes of figures `keys` (see FIGURES): the run's files where they exist, else drawn in memory."""
        import io

        out = {}
        for key in keys:
            path = RunDir(self.path).figure_path(key)
            if path.is_file():
                out[key] = path.read_bytes()
                continue
            if key == "survival":
                from tl_isokl.figures.survival import survival_plot
                from tl_isokl.survival import km_curves, run_window

                fig = survival_plot(km_curves(self), window=run_window(self), threshold=self.threshold).figure
            elif key in ("spaghetti_raw", "spaghetti_normalised"):
                from tl_isokl.figures.spaghetti import spaghetti

                fig = spaghetti(self, mode=key.split("_", 1)[1])
            else:
                continue
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=90)
            out[key] = buf.getvalue()
        return out

    def _repr_html_(self) -> str:
        """The inline view in a notebook: what was run, the per-alpha summary table and the survival and spaghetti
        figures (base64 PNG: no files needed)."""
        import base64
        import html

        from tl_isokl.sweep import summary_rows

        m, cal = self.manifest, self.calibration or {}
        c = cal.get("c_star")
        head = (f"<b>tl-isokl run</b> <code>{html.escape(str(self.path))}</code><br>"
                f"model <code>{html.escape(str(m.get('model')))}</code> · method {html.escape(str(m.get('method')))}"
                + (f" · gate {html.escape(self._gate_text())}" if m.get("gate") else "") +
                f" · layer {m.get('layer')} · c* = {f'{c:.4g}' if isinstance(c, (int, float)) else '?'}"
                f" · window {m.get('window')} · threshold {self.threshold:g}")
        cols = [("alpha", "alpha"), ("coeff", "coeff"), ("n", "n"), ("died", "died"), ("censored", "censored"),
                ("kl_p50", "KL p50"), ("kl_p95", "KL p95"), ("kl_max", "KL max"),
                ("median_death_token", "median death")]
        rows = summary_rows(self)

        def cell(v: Any) -> str:
            if v is None:
                return "—"
            return f"{v:.4g}" if isinstance(v, float) else html.escape(str(v))

        td = 'style="text-align:right;padding:1px 8px"'
        table = ('<table style="border-collapse:collapse;margin:6px 0"><tr>'
                 + "".join(f"<th {td}>{h}</th>" for _, h in cols) + "</tr>"
                 + "".join("<tr>" + "".join(f"<td {td}>{cell(r.get(k))}</td>" for k, _ in cols) + "</tr>"
                           for r in rows) + "</table>")
        imgs = "".join(f'<img alt="{k}" style="max-width:48%;margin:4px" '
                       f'src="data:image/png;base64,{base64.b64encode(b).decode()}">'
                       for k, b in self.figures_png().items())
        return f"<div>{head}{table}<div>{imgs}</div><small>median death: — = not reached</small></div>"


class RunDir:
    """Paths and atomic reads/writes of one run directory."""

    def __init__(self, path: str | Path):
        self.path = Path(path)

    @property
    def manifest_path(self) -> Path:
        return self.path / MANIFEST

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION

    @property
    def calibration_neg_path(self) -> Path:
        return self.path / CALIBRATION_NEG

    @property
    def vector_path(self) -> Path:
        return self.path / VECTOR

    @property
    def figures(self) -> Path:
        return self.path / FIGURES_DIR

    def figure_path(self, key: str) -> Path:
        """Path of figure `key` ("spaghetti_raw", "spaghetti_normalised", "survival")."""
        return self.figures / FIGURES[key]

    @property
    def forks_path(self) -> Path:
        return self.path / FORKS

    @property
    def summary_path(self) -> Path:
        return self.path / SUMMARY

    @property
    def report_path(self) -> Path:
        return self.path / REPORT

    @property
    def report_html_path(self) -> Path:
        return self.path / REPORT_HTML

    @property
    def inspect_dir(self) -> Path:
        """Default folder of `tl-isokl inspect` pages (index.html, trace-r*.html, deaths.json/csv)."""
        return self.path / INSPECT_DIR

    def cell_path(self, alpha: float) -> Path:
        return self.path / CELLS / f"alpha={alpha_key(alpha)}.jsonl"

    def has_cell(self, alpha: float) -> bool:
        return self.cell_path(alpha).is_file()

    def write_cell(self, alpha: float, trajectories: list[Trajectory], threshold: float | None = None) -> Path:
        """One alpha's trajectories, atomically; with `threshold`, each line also carries its fate (derived)."""
        return atomic_write_jsonl(self.cell_path(alpha), [t.to_dict(threshold) for t in trajectories])

    def owned_files(self) -> list[tuple[Path, list[str]]]:
        """(folder, glob patterns) of every file tl-isokl writes into a run directory: what `--fresh` may remove,
        and nothing else."""
        return [
            (self.path, [MANIFEST, CALIBRATION, CALIBRATION_NEG, VECTOR, FORKS, SUMMARY, REPORT, REPORT_HTML]),
            (self.path / CELLS, ["alpha=*.jsonl"]),
            (self.figures, list(FIGURES.values())),
            (self.inspect_dir, list(INSPECT_FILES)),
            *[plan for d in self.rederived_dirs() for plan in (
                (d / FIGURES_DIR, list(FIGURES.values())), (d / INSPECT_DIR, list(INSPECT_FILES)),
                (d, [REPORT, REPORT_HTML]))],  # a folder after its subfolders: removed once empty
        ]

    def rederived_dirs(self) -> list[Path]:
        """RUN/threshold=<v>/ folders: report, figures and inspect pages re-derived at another threshold."""
        return sorted(p for p in self.path.glob("threshold=*") if p.is_dir())

    def write_manifest(self, manifest: dict[str, Any]) -> Path:
        """Write a manifest as given (tests and tools); commands use `record`."""
        return atomic_write_json(self.manifest_path, manifest)

    def record(self, manifest: Manifest) -> Path:
        """Write this command's manifest, merged with the one already here (history kept, never replaced)."""
        old = self.read_manifest() if self.manifest_path.is_file() else None
        return atomic_write_json(self.manifest_path, merge_manifest(old, manifest.to_dict()))

    def read_manifest(self) -> dict[str, Any]:
        if not self.manifest_path.is_file():
            raise RunDirError(f"{self.path} is not a run directory (no {MANIFEST}); pass the --out folder of a sweep")
        return read_json(self.manifest_path, kind=dict)

    def read_calibration(self) -> dict[str, Any] | None:
        return read_json(self.calibration_path, kind=dict) if self.calibration_path.is_file() else None

    def load(self) -> Run:
        manifest = self.read_manifest()
        cal = self.read_calibration()
        trajs: list[Trajectory] = []
        for p in sorted((self.path / CELLS).glob("alpha=*.jsonl"), key=_cell_alpha):
            trajs.extend(_read_cell(p))
        if not trajs:
            raise RunDirError(f"{self.path} has no finished alpha cells in {CELLS}/; run `tl-isokl sweep --out {self.path}`")
        return Run(path=self.path, manifest=manifest, calibration=cal, trajectories=trajs)


def _cell_alpha(p: Path) -> float:
    try:
        return float(p.stem.split("=", 1)[1])
    except ValueError:
        raise RunDirError(f"{p}: not a cell file name (alpha=<number>.jsonl); move it out of {p.parent}") from None


def _read_cell(p: Path) -> list[Trajectory]:
    """A cell's trajectories; a damaged line is one RunDirError naming file:line (never a TypeError later)."""
    out = []
    for n, d in enumerate(read_jsonl(p), 1):
        try:
            if not isinstance(d, dict):
                raise TypeError(f"a JSON {type(d).__name__}, not an object")
            out.append(Trajectory.from_dict(d))
        except (TypeError, KeyError, ValueError, AttributeError) as e:
            raise RunDirError(f"{p}: record {n} is not a trajectory ({type(e).__name__}: {e}); the file is damaged "
                              f"- delete it and rerun the sweep to recompute that alpha") from None
    return out


def load_run(path: str | Path) -> Run:
    """Load a sweep's run directory (manifest, calibration and every finished alpha cell)."""
    return RunDir(path).load()
