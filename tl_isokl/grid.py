"""Grids of experiments as idempotent cells: `tl-isokl grid GRID.toml --out DIR`, locally or on Ray.

A grid is the product of the axes in GRID.toml (model x spec x layer x window x target x ...); every point is one
ordinary sweep experiment, a run directory ``DIR/<name>`` named like `tl-isokl sweep`'s default folder
(`runpolicy.default_run_path`), which report / plot / inspect / compare read as they read any sweep.

Each experiment is split into **cells**, each identified by a hash of everything that changes its result (the
experiment's `sweep_request` plus the cell's kind and alphas) and each written atomically into the run directory:

* ``calibrate``: the sweep's preparation (`experiment.prepare_sweep`: preflight on the held-out prompts, the
  vector, c*), whose vector and calibration it leaves in the run directory (calibration.json, vector.safetensors),
  and the experiment's plan: the fixed partition of its alphas into decode groups (`sweep.alpha_groups`, exactly
  the groups `tl-isokl sweep` would decode together) and the preflight result.
* ``sweep``: one alpha group: the same preparation (finding that calibration) restricted to those alphas, then
  `SweepPlan.run`: its cells/alpha=<a>.jsonl files, byte-identical to an ordinary sweep's (same batch
  composition, same calibration, same vector).
* ``merge``: the same over all alphas once every alpha file exists: it recomputes nothing, and writes the manifest
  (all alphas), summary.csv, forks.csv, figures and report (`experiment.finish_sweep`), as a resumed
  `tl-isokl sweep` would.

With ``shards = N`` in GRID.toml each alpha group is N cells, each a contiguous block of the held-out rows
(``DIR/.grid/<name>/shards/alpha=<a>.shard-<k>-of-<N>.jsonl``); the merge first concatenates them, in order, into
cells/alpha=<a>.jsonl. A shard decodes fewer rows per batch, so sharded numbers equal the unsharded ones up to float
rounding (same tokens, KL within ~1e-5 on the test bed); the shard count is fixed in the experiment's plan, so
reruns and retries stay byte-identical. After a grid run, DIR/grid.csv tabulates every finished experiment x alpha
with its axis values and compare's columns (`compare.compare_rows`).

A cell whose files exist is skipped, so a rerun, a retried Ray task, a preempted node or a second driver on the
same DIR never recomputes finished work. Cells take a lock file (``DIR/.grid/<name>/<cell id>.lock``, `fcntl.flock`)
while they run: a second driver waits for the first, then finds the files and skips. Bookkeeping (plan, failures,
locks, the merge marker) lives in ``DIR/.grid/``, never in the run directories; ``DIR/grid.json`` lists the
experiments for `status`.

Engines (`Engine`): ``local`` runs the cells in this process in dependency order (calibrate, its sweep cells,
merge), one progress line per finished cell; ``ray`` submits every cell as a Ray task (`ray.init()` locally or
`address=` for a cluster), with num_cpus / num_gpus per cell and retries; each worker keeps the loaded model per
model spec across cells (`cached_model`).

`tl-isokl sweep --engine ray` is a grid of one experiment (`run_sweep`; its bookkeeping in RUN/.grid/, nothing
beside the run directory) and `tl-isokl compare --engine ray` one experiment per spec (`run_experiments`; in
OUT/.grid/), each then finished as the command finishes it (the summary; compare's tables).
"""

from __future__ import annotations

import contextlib
import itertools
import json
import sys
import threading
import time
import tomllib
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable, Iterator, Mapping, Sequence

from tl_isokl.errors import IsoKLError

Echo = Callable[[str], None]

GRID_JSON = "grid.json"
STATE_DIR = ".grid"
PLAN = "plan.json"
FAILED = "failed.json"
MERGED = "merged.json"

# axes: a value or a list of values in GRID.toml; the product is the set of experiments
AXES = {
    "model": "model", "spec": None, "layer": "layer", "window": "window", "target": "target", "stat": "stat",
    "prompts": "heldout_prompts", "calibration_prompts": "calibration_prompts", "seed": "seed",
    "concept": "concept", "threshold": "threshold",
}
PATH_FIELDS = ("heldout_prompts", "calibration_prompts", "probe_file")
# settings every experiment shares ([settings] table): ExperimentSettings fields by name
SETTINGS = ("dtype", "device", "positions", "tol", "c_min", "c_max", "batch_size", "schedule", "allow_unconverged",
            "allow_other_model", "figures", "probe_preset", "probe_file", "probe_prefill", "probe_true",
            "probe_false", "probe_think_close", "skip_preflight", "chat_template", "revision", "temperature",
            "top_p", "samples_per_prompt")
EXAMPLE = 'e.g. spec = ["mean_diff", "pca"], layer = [2, 3], window = 64, alphas = [0, 1, 2]'


class GridError(IsoKLError):
    """A GRID.toml that cannot be run (one line naming the key, the value and the fix)."""


# ------------------------------------------------------------------------------------------------ the grid file


@dataclass
class Experiment:
    """One point of the grid: its run directory's name, the axis values that made it, and its settings."""

    name: str
    axes: dict[str, Any]
    settings: Any  # ExperimentSettings, out = DIR/name


@dataclass
class Grid:
    path: Path | None
    alphas: tuple[float, ...]
    experiments: list[Experiment] = field(default_factory=list)
    shards: int = 1  # prompt shards per alpha group (1: the sweep's own cells, byte-identical)


def _as_list(key: str, value: Any) -> list:
    vals = value if isinstance(value, list) else [value]
    if not vals:
        raise GridError(f"GRID.toml: {key} = [] is empty; give a value or a list of values, {EXAMPLE}")
    return vals


def _check_type(key: str, value: Any, types: tuple, what: str) -> Any:
    if isinstance(value, bool) and bool not in types or not isinstance(value, types):
        raise GridError(f"GRID.toml: {key} = {value!r} must be {what}")
    return value


def _path(base: Path, key: str, value: Any) -> Path:
    _check_type(key, value, (str,), "a file path (a string, relative to GRID.toml)")
    p = Path(value).expanduser()
    p = p if p.is_absolute() else base / p
    if not p.is_file():
        raise GridError(f"GRID.toml: {key} = {value!r}: no such file {p}; paths are relative to GRID.toml's folder")
    return p


def parse_grid(source: str | Path | Mapping[str, Any], *, base: Path | None = None) -> Grid:
    """GRID.toml (a path, or its parsed table) -> Grid: every experiment's settings, checked before any model loads.

    Top-level keys: the axes (model, spec, layer, window, target, stat, prompts, calibration_prompts, seed,
    concept, threshold; each a value or a list), ``alphas`` (one list of doses, shared by every experiment: each
    alpha is already its own cell) and an optional ``[settings]`` table of shared sweep settings (dtype, tol,
    batch_size, probe_preset, skip_preflight, ...)."""
    from tl_isokl.compare import parse_spec
    from tl_isokl.experiment import ExperimentSettings, check_stat
    from tl_isokl.sweep import parse_alphas

    path = None
    if isinstance(source, Mapping):
        table = dict(source)
        base = Path(base or ".").resolve()
    else:
        path = Path(source)
        if not path.is_file():
            raise GridError(f"grid file {str(path)!r} does not exist; write a GRID.toml ({EXAMPLE})")
        try:
            table = tomllib.loads(path.read_text(encoding="utf-8"))
        except tomllib.TOMLDecodeError as e:
            raise GridError(f"{path}: not valid TOML ({e}); fix the file ({EXAMPLE})") from None
        except UnicodeDecodeError:
            raise GridError(f"{path}: not UTF-8 text; save GRID.toml as UTF-8") from None
        base = path.parent.resolve()  # absolute: Ray workers need not share the driver's working directory
    unknown = sorted(set(table) - set(AXES) - {"alphas", "settings", "shards"})
    if unknown:
        raise GridError(f"GRID.toml: unknown key {unknown[0]!r}; axes are {', '.join(sorted(AXES))}, plus alphas, "
                        f"shards and a [settings] table")
    shards = table.get("shards", 1)
    if isinstance(shards, bool) or not isinstance(shards, int) or shards < 1:
        raise GridError(f"GRID.toml: shards = {shards!r} must be an integer >= 1 (prompt shards per alpha group; "
                        f"1 = no sharding)")
    if "alphas" not in table:
        raise GridError("GRID.toml: no alphas; add e.g. alphas = [0, 0.5, 1, 2, 4] (doses in units of c*)")
    raw_alphas = table["alphas"]
    if isinstance(raw_alphas, list) and any(isinstance(a, list) for a in raw_alphas):
        raise GridError(f"GRID.toml: alphas = {raw_alphas!r} is a list of lists; give one list of doses shared by "
                        f"every experiment (each alpha is its own cell already), e.g. alphas = [0, 1, 2]")
    if not isinstance(raw_alphas, (list, str)) or any(isinstance(a, (bool, str)) for a in _as_list("alphas",
                                                                                                     raw_alphas)):
        raise GridError(f"GRID.toml: alphas = {raw_alphas!r} must be a list of numbers, e.g. alphas = [0, 1, 2]")
    try:
        alphas = parse_alphas(raw_alphas)
    except IsoKLError as e:
        raise GridError(f"GRID.toml: alphas = {raw_alphas!r}: {e}") from None

    shared: dict[str, Any] = {}
    settings = table.get("settings", {})
    if not isinstance(settings, dict):
        raise GridError(f"GRID.toml: settings = {settings!r} must be a table ([settings] with key = value lines)")
    for k, v in settings.items():
        if k not in SETTINGS:
            hint = (f"; {k} is an axis: put it at the top level" if k in AXES or k in ("heldout_prompts",) else "")
            raise GridError(f"GRID.toml: [settings] has unknown key {k!r}{hint}; known: {', '.join(SETTINGS)}")
        if k in PATH_FIELDS:
            v = _path(base, f"settings.{k}", v)
        elif k in ("probe_true", "probe_false"):
            v = tuple(_as_list(f"settings.{k}", v))
        shared[k] = v

    axes: dict[str, list] = {}
    for key in AXES:
        if key in table:
            axes[key] = _as_list(key, table[key])
    checked: dict[str, list] = {}
    for key, vals in axes.items():
        out = []
        for v in vals:
            if key == "model":
                _check_type(key, v, (str,), 'a model name or folder (a string; "embedded" = the built-in test bed)')
                p = Path(v).expanduser()
                if v != "embedded" and not p.is_absolute() and (base / p).exists():  # a folder next to GRID.toml
                    v = str((base / p).resolve())
                elif v != "embedded" and p.exists():
                    v = str(p.resolve())
                out.append(None if v == "embedded" else v)  # else a hub name, resolved from the local HF cache
            elif key == "spec":
                _check_type(key, v, (str,), f"a steering spec (a string), {EXAMPLE}")
                try:
                    out.append(parse_spec(v))
                except IsoKLError as e:
                    raise GridError(f"GRID.toml: spec = {v!r}: {e}") from None
            elif key == "layer":
                if v == "mid":
                    out.append(None)
                else:
                    _check_type(key, v, (int,), 'a block index (an integer, or "mid" for the middle block)')
                    if v < 0:
                        raise GridError(f"GRID.toml: layer = {v} must be >= 0 (a block index, or \"mid\")")
                    out.append(v)
            elif key == "window":
                _check_type(key, v, (int,), "a number of generated tokens (an integer >= 1), e.g. window = 64")
                if v < 1:
                    raise GridError(f"GRID.toml: window = {v} must be >= 1 (generated tokens per rollout)")
                out.append(v)
            elif key in ("target", "threshold"):
                _check_type(key, v, (int, float), "a positive number")
                if not v > 0 or (key == "threshold" and v > 1):
                    raise GridError(f"GRID.toml: {key} = {v} must be " + ("in (0, 1]" if key == "threshold"
                                                                          else "> 0 (nats)"))
                out.append(float(v))
            elif key == "stat":
                _check_type(key, v, (str,), "a calibration statistic name, e.g. p95")
                try:
                    check_stat(v)
                except IsoKLError as e:
                    raise GridError(f"GRID.toml: stat = {v!r}: {e}") from None
                out.append(v)
            elif key in ("prompts", "calibration_prompts"):
                out.append(_path(base, key, v))
            elif key == "seed":
                _check_type(key, v, (int,), "an integer")
                out.append(v)
            elif key == "concept":
                _check_type(key, v, (str,), "POS/NEG, e.g. cheerful/gloomy")
                if v.count("/") != 1:
                    raise GridError(f"GRID.toml: concept = {v!r} must be POS/NEG, e.g. cheerful/gloomy")
                out.append(v)
        checked[key] = out

    try:
        template = ExperimentSettings(alphas=alphas, **shared)
        template.probe()  # a bad probe preset or file fails now
    except TypeError as e:
        raise GridError(f"GRID.toml: [settings]: {e}") from None
    grid = Grid(path=path, alphas=alphas, shards=shards)
    keys = list(checked)
    seen: dict[str, dict] = {}
    for combo in itertools.product(*(checked[k] for k in keys)):
        point = dict(zip(keys, combo))
        kw: dict[str, Any] = {}
        for k, v in point.items():
            if k == "spec":
                kw.update(method=v.method, gate=v.gate, tau=v.tau)
            else:
                kw[AXES[k]] = v
        s = replace(template, **kw)
        shown = {k: (v.name if k == "spec" else str(v) if isinstance(v, Path) else v) for k, v in point.items()}
        name = experiment_name(s)
        if name in seen:
            raise GridError(f"GRID.toml: two points of the grid are the same experiment ({seen[name]} and {shown}, "
                            f"run directory {name}); remove the duplicate axis value")
        seen[name] = shown
        grid.experiments.append(Experiment(name=name, axes=shown, settings=s))
    return grid


def experiment_name(s) -> str:
    """The run directory's name: `tl-isokl sweep`'s default folder name for these settings (the gate, if any, in
    the tag as compare spells it)."""
    from tl_isokl.compare import Spec
    from tl_isokl.experiment import sweep_request
    from tl_isokl.runpolicy import default_run_path, model_spec

    spec = model_spec(s.model)
    tag = Spec(s.method, s.gate, s.tau).slug
    return default_run_path("sweep", spec, tag, s.layer, s.window, sweep_request(s, spec, None, None)).name


# ------------------------------------------------------------------------------------------------ cells


@dataclass
class Cell:
    """One unit of work: `kind` in {"calibrate", "sweep", "merge"} of experiment `name` under grid folder `root`."""

    kind: str
    name: str
    root: Path
    settings: Any  # ExperimentSettings of the experiment (out = root/name, all alphas)
    alphas: tuple[float, ...] = ()
    shard: tuple[int, int] | None = None  # (k, n): the k-th of n contiguous blocks of the held-out rows
    shards: int = 1  # the calibrate cell: shards to plan (the plan, once written, decides)
    state: Path | None = None  # bookkeeping folder; default root/.grid/name (`tl-isokl sweep`: RUN/.grid)

    @property
    def run_dir(self) -> Path:
        return self.root / self.name

    @property
    def state_dir(self) -> Path:
        return self.state if self.state is not None else self.root / STATE_DIR / self.name

    @property
    def id(self) -> str:
        """A hash of everything that changes the cell's result."""
        from tl_isokl.experiment import sweep_request
        from tl_isokl.files import sha256_json
        from tl_isokl.runpolicy import model_spec

        req = sweep_request(self.settings, model_spec(self.settings.model), None, None)
        alphas = list(self.settings.alphas) if self.kind == "merge" else list(self.alphas)
        return sha256_json({"kind": self.kind, "request": json.loads(json.dumps(req, default=str)),
                            "alphas": alphas, **({"shard": list(self.shard)} if self.shard else {})})[:12]

    @property
    def label(self) -> str:
        if self.kind == "sweep":
            from tl_isokl.rundir import alpha_key

            part = f" shard {self.shard[0] + 1}/{self.shard[1]}" if self.shard else ""
            return f"{self.name} sweep α={','.join(alpha_key(a) for a in self.alphas)}{part}"
        return f"{self.name} {self.kind}"


def read_plan(state_dir: Path) -> dict[str, Any] | None:
    from tl_isokl.files import read_json

    p = Path(state_dir) / PLAN
    return read_json(p, kind=dict) if p.is_file() else None


def plan_fits(cell: Cell, plan: Mapping[str, Any] | None) -> bool:
    """Whether a stored plan was made for this experiment and these alphas (a sweep resumed with more alphas, or
    a folder reused with other settings after a local --fresh, needs a new one)."""
    from tl_isokl.sweep import parse_alphas

    return (plan is not None and plan.get("id") == replace(cell, kind="calibrate", alphas=(), shard=None).id
            and plan.get("alphas") == list(parse_alphas(cell.settings.alphas)))


def sweep_cells(cell: Cell) -> list[Cell]:
    """The sweep cells of an experiment whose calibrate cell is done (its plan fixes the alpha groups)."""
    plan = read_plan(cell.state_dir)
    if plan is None:
        raise IsoKLError(f"{cell.state_dir / PLAN} is missing; the calibrate cell of {cell.name} must run first")
    n = int(plan.get("shards", 1))
    return [replace(cell, kind="sweep", alphas=tuple(float(a) for a in g), shard=(k, n) if n > 1 else None)
            for g in plan["groups"] for k in range(n)]


def merge_cell(cell: Cell) -> Cell:
    return replace(cell, kind="merge", alphas=(), shard=None)


def shard_path(cell: Cell, alpha: float, k: int, n: int) -> Path:
    """Where shard k of n of one alpha waits for the merge: DIR/.grid/<name>/shards/ (not a run-directory file)."""
    from tl_isokl.rundir import alpha_key

    return cell.state_dir / "shards" / f"alpha={alpha_key(alpha)}.shard-{k}-of-{n}.jsonl"


def cell_done(cell: Cell) -> bool:
    """Whether the cell's files exist (then running it again would write the same files)."""
    from tl_isokl.rundir import RunDir

    rd = RunDir(cell.run_dir)
    if cell.kind == "calibrate":
        return rd.calibration_path.is_file() and plan_fits(cell, read_plan(cell.state_dir))
    if cell.kind == "sweep":
        if all(rd.has_cell(a) for a in cell.alphas):
            return True
        return cell.shard is not None and all(shard_path(cell, a, *cell.shard).is_file() for a in cell.alphas)
    marker = cell.state_dir / MERGED
    if not (marker.is_file() and rd.summary_path.is_file()):
        return False
    try:
        return json.loads(marker.read_text()).get("id") == cell.id
    except ValueError:
        return False


@contextlib.contextmanager
def cell_lock(cell: Cell) -> Iterator[None]:
    """An exclusive lock on the cell (flock on DIR/.grid/<name>/<id>.lock): a second driver or worker waits."""
    import fcntl

    cell.state_dir.mkdir(parents=True, exist_ok=True)
    with open(cell.state_dir / f"{cell.kind}-{cell.id}.lock", "a+") as f:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


_MODELS: dict[tuple, Any] = {}
_COMPUTE = threading.RLock()  # one cell at a time per process: cached models carry hooks while they steer


def model_key(s) -> tuple:
    from tl_isokl.runpolicy import model_spec

    return model_spec(s.model), s.dtype, s.device, s.revision


def cached_model(s):
    """The model of settings `s`, loaded once per process (a Ray worker keeps it across the cells it runs)."""
    from tl_isokl import experiment

    key = model_key(s)
    if key not in _MODELS:
        _MODELS[key] = experiment.load(s)
    return _MODELS[key]


def compute_cell(cell: Cell, model) -> dict[str, Any]:
    """Compute one cell into its run directory (no skip check, no lock: `execute_cell` does those)."""
    if cell.kind == "calibrate":
        return _calibrate(cell, model)
    if cell.kind == "sweep" and cell.shard is not None:
        return _sweep_shard(cell, model)
    if cell.kind == "sweep":
        plan, rows = _prepared(cell, model, replace(cell.settings, alphas=cell.alphas, figures=False))
        run = plan.run(decode_batch_size=rows)
        return {"rows": sum(t.alpha in cell.alphas for t in run.trajectories)}
    if cell.kind == "merge":
        from tl_isokl.experiment import finish_sweep
        from tl_isokl.files import atomic_write_json

        _gather_shards(cell)
        plan, rows = _prepared(cell, model, cell.settings)
        run = plan.run(decode_batch_size=rows)  # every cell exists: nothing is decoded, tables are written
        finish_sweep(plan, run)
        atomic_write_json(cell.state_dir / MERGED, {"id": cell.id, "alphas": list(cell.settings.alphas)})
        return {"rows": len(run.trajectories)}
    raise IsoKLError(f"unknown cell kind {cell.kind!r}")


def execute_cell(cell: Cell) -> dict[str, Any]:
    """Run a cell unless its files exist: lock, check, compute, clear its failure record. Returns
    {"skipped": bool, "seconds": float, ...}; the calibrate cell's result carries the experiment's alpha groups."""
    import torch

    t0, c0 = time.time(), time.process_time()
    with cell_lock(cell):
        if cell_done(cell):
            return {"skipped": True, "seconds": 0.0, "cpu_seconds": 0.0}
        with _COMPUTE:
            model = cached_model(cell.settings)
            torch.manual_seed(cell.settings.seed)  # as `experiment.load` seeds a fresh process
            out = compute_cell(cell, model)
        (cell.state_dir / FAILED).unlink(missing_ok=True)
    return {"skipped": False, "seconds": round(time.time() - t0, 2),
            "cpu_seconds": round(time.process_time() - c0, 2), **out}


def record_failure(cell: Cell, error: BaseException | str) -> None:
    from tl_isokl.files import atomic_write_json

    atomic_write_json(cell.state_dir / FAILED, {"cell": cell.kind, "alphas": list(cell.alphas), "id": cell.id,
                                                "error": str(error), "time": time.strftime("%Y-%m-%dT%H:%M:%S")})


def _calibrate(cell: Cell, model) -> dict[str, Any]:
    """`prepare_sweep` of the whole experiment (preflight, vector, calibration: found, explicit or made now),
    then what its sweep cells read back: the vector and calibration(s) in the run directory, written as a sweep
    would (only where missing), and the plan in the bookkeeping folder: the alpha groups, rows per decode batch,
    shards and the preflight result."""
    from tl_isokl.experiment import prepare_sweep
    from tl_isokl.files import atomic_write_json
    from tl_isokl.rundir import RunDir
    from tl_isokl.sweep import alpha_groups, default_decode_rows

    s = cell.settings
    prep = prepare_sweep(s, model=model)
    rd = RunDir(cell.run_dir)
    if not rd.vector_path.is_file():
        prep.vector.save(rd.vector_path)
    if not rd.calibration_path.is_file():
        atomic_write_json(rd.calibration_path, prep.calibration)
    if prep.calibration_neg is not None and not rd.calibration_neg_path.is_file():
        atomic_write_json(rd.calibration_neg_path, prep.calibration_neg)
    plan = read_plan(cell.state_dir)
    if not plan_fits(cell, plan):  # then fixed: a resumed or retried run decodes the same groups
        rows = default_decode_rows(model, s.window)
        n = len(prep.prompts) * int(s.samples_per_prompt)
        shards = max(1, min(int(cell.shards), n))
        per_shard = -(-n // shards)  # rows of the largest shard: groups fill the decode batch with shard rows
        plan = {"id": cell.id, "rows": rows, "n_rows_per_alpha": n, "alphas": list(prep.kwargs["alphas"]),
                "shards": shards, "groups": [list(g) for g in alpha_groups(prep.kwargs["alphas"], per_shard, rows)]}
    plan["preflight"] = prep.preflight
    atomic_write_json(cell.state_dir / PLAN, plan)
    return {"c_star": prep.calibration["c_star"], "groups": plan["groups"], "preflight": prep.preflight}


def _prepared(cell: Cell, model, s):
    """`prepare_sweep` for a sweep or merge cell: the calibration is the one the calibrate cell left in the run
    directory and the preflight is its recorded result (not rerun). Returns (plan, rows per decode batch)."""
    from tl_isokl.experiment import prepare_sweep

    stored = read_plan(cell.state_dir) or {}
    plan = prepare_sweep(s, model=model, preflight=stored.get("preflight") or None)
    return plan, stored.get("rows")


def _sweep_shard(cell: Cell, model) -> dict[str, Any]:
    """Shard k of n of an alpha group: its contiguous block of held-out rows decoded together at the group's
    alphas (`rollout_group`), then KL and probes (`run_cell`), each alpha's rows into a shard file. A shard decodes
    fewer rows per batch than the unsharded sweep, so its numbers match the unsharded ones up to float rounding,
    not bit for bit; the plan fixes the shard count, so reruns and retries are byte-identical."""
    from tl_isokl.calibrate import CalibrationResult
    from tl_isokl.files import atomic_write_jsonl
    from tl_isokl.probe import AnswerProbe
    from tl_isokl.sweep import SweepConfig, expand_samples, rollout_group, run_cell

    plan, rows = _prepared(cell, model, replace(cell.settings, alphas=cell.alphas, figures=False))
    kw = plan.kwargs
    cal = CalibrationResult.from_dict(plan.calibration)
    prompts, pids, _ = expand_samples(plan.prompts, plan.prompt_ids, kw["samples_per_prompt"])
    neg = plan.calibration_neg
    k, n = cell.shard
    lo, hi = k * len(prompts) // n, (k + 1) * len(prompts) // n
    cfg = SweepConfig(c_star=cal.c_star, window=int(kw["window"]), threshold=float(kw["threshold"]),
                      probe=AnswerProbe(kw["spec"], kw["schedule"]), positions=kw["positions"], prompts=prompts[lo:hi],
                      prompt_ids=pids[lo:hi], sampling=kw["sampling"],
                      c_star_neg=None if neg is None else neg["c_star"], readout=kw["readout"])
    rolled = rollout_group(model, plan.vector, cell.alphas, cfg, decode_batch_size=int(rows or 128))
    for a in cell.alphas:
        trajs = run_cell(model, plan.vector, a, cfg, rolled[a], batch_size=int(kw["batch_size"]))
        atomic_write_jsonl(shard_path(cell, a, k, n), [t.to_dict(cfg.threshold) for t in trajs])
    return {"rows": (hi - lo) * len(cell.alphas)}


def _gather_shards(cell: Cell) -> None:
    """The merge's first step for a sharded experiment: each alpha's shard files, in shard order, become its cell
    file cells/alpha=<a>.jsonl (atomically; the rows in the unsharded order), then the shard files go."""
    from tl_isokl.files import atomic_write_text
    from tl_isokl.rundir import RunDir

    plan = read_plan(cell.state_dir) or {}
    n = int(plan.get("shards", 1))
    if n <= 1:
        return
    rd = RunDir(cell.run_dir)
    for a in cell.settings.alphas:
        parts = [shard_path(cell, a, k, n) for k in range(n)]
        if rd.has_cell(a):
            continue
        missing = [p for p in parts if not p.is_file()]
        if missing:
            raise IsoKLError(f"{missing[0]} is missing; rerun the grid to compute that shard")
        atomic_write_text(rd.cell_path(a), "".join(p.read_text(encoding="utf-8") for p in parts))
    for a in cell.settings.alphas:
        for k in range(n):
            shard_path(cell, a, k, n).unlink(missing_ok=True)


# ------------------------------------------------------------------------------------------------ engines


@dataclass
class GridResult:
    done: list[str] = field(default_factory=list)      # experiments merged
    failed: dict[str, str] = field(default_factory=dict)  # experiment -> error
    computed: int = 0
    skipped: int = 0
    seconds: float = 0.0
    cells: list[dict[str, Any]] = field(default_factory=list)  # per executed cell: label, skipped, seconds


def prepare(grid: Grid, out: str | Path) -> list[Cell]:
    """Bind the grid to DIR: settings' out = DIR/<name>, DIR/grid.json lists the experiments (a union with the
    ones an earlier grid put there). Returns the calibrate cells."""
    from tl_isokl.files import atomic_write_json, check_writable_dir, read_json

    out = Path(out).resolve()  # absolute: Ray workers need not share the driver's working directory
    check_writable_dir(out, what="--out")
    index_path = out / GRID_JSON
    index = read_json(index_path, kind=dict) if index_path.is_file() else {"experiments": {}}
    cells = []
    for e in grid.experiments:
        e.settings = replace(e.settings, out=out / e.name, extra={**e.settings.extra, "grid": {
            "dir": str(out), "experiment": e.name}})  # recorded in the run's manifest
        index["experiments"][e.name] = {"axes": e.axes, "alphas": list(grid.alphas)}
        cells.append(Cell("calibrate", e.name, out, e.settings, shards=grid.shards))
    index["grid"] = str(grid.path.resolve()) if grid.path else None
    atomic_write_json(index_path, index)
    return cells


ENGINES = ("local", "ray")


@dataclass(frozen=True)
class Engine:
    """Where cells run: "local" (this process, in dependency order) or "ray" (tasks; `address` of a cluster or
    None for a local Ray, resources per cell, and retries of a task whose worker died). The same options for
    `tl-isokl grid`, `sweep` and `compare`."""

    name: str = "local"
    address: str | None = None
    gpus_per_cell: float = 0
    cpus_per_cell: float = 1
    retries: int = 3

    def __post_init__(self):
        if self.name not in ENGINES:
            raise GridError(f"engine {self.name!r} is unknown; use {' or '.join(ENGINES)}")

    @classmethod
    def of(cls, engine: "Engine | str | None") -> "Engine":
        """An Engine from what a Python caller passes: an Engine, a name ("ray"), or None (local)."""
        return engine if isinstance(engine, Engine) else cls(engine or "local")


def run_cells(cells: Sequence[Cell], engine: Engine = Engine(), *, echo: Echo = lambda _: None,
              ray_task: Callable[[Cell, int], dict] | None = None) -> GridResult:
    """Run (or resume) calibrate cells and the cells they lead to (sweep cells from the plan, then the merge).

    Ray: each cell is a task reserving `cpus_per_cell` CPUs (also its torch threads) and `gpus_per_cell` GPUs,
    retried up to `retries` times when its worker dies (a cell that raises is recorded as failed, not retried:
    rerun after fixing it). `ray_task`: the function a task runs (default `_ray_cell`; tests use it to kill a
    worker)."""
    t0 = time.time()
    if engine.name == "local":
        res = _run_local(list(cells), echo)
    else:
        res = _run_ray(list(cells), echo, address=engine.address, gpus=engine.gpus_per_cell,
                       cpus=engine.cpus_per_cell, retries=engine.retries, fn=ray_task or _ray_cell)
    res.seconds = round(time.time() - t0, 2)
    return res


def run_grid(grid: Grid, out: str | Path, *, engine: str = "local", address: str | None = None,
             gpus_per_cell: float = 0, cpus_per_cell: float = 1, retries: int = 3, echo: Echo = lambda _: None,
             ray_task: Callable[[Cell, int], dict] | None = None) -> GridResult:
    """Run (or resume) every cell of `grid` under `out` with `engine` ("local" or "ray"; see `run_cells`), then
    DIR/grid.csv."""
    how = Engine(engine, address, gpus_per_cell, cpus_per_cell, retries)
    res = run_cells(prepare(grid, out), how, echo=echo, ray_task=ray_task)
    if res.done:
        write_table(out)
    return res


GRID_CSV = "grid.csv"


def write_table(out: str | Path) -> Path | None:
    """DIR/grid.csv: one row per finished experiment x alpha, its axis values beside compare's columns
    (`compare.compare_rows`: c*, held-out KL, survival at the window with its CI, median death, concept effect).
    Rewritten from the run directories after every grid run; None when no experiment is finished."""
    from tl_isokl.compare import _columns, compare_rows, effects_of_runs
    from tl_isokl.files import atomic_write_text, csv_text
    from tl_isokl.rundir import load_run

    out = Path(out)
    rows = [r for r in status(out) if r["state"] == "done"]
    if not rows:
        return None
    runs = {r["experiment"]: load_run(out / r["experiment"]) for r in rows}
    axes = {r["experiment"]: r["axes"] for r in rows}
    table = [{"experiment": row["spec"], **{f"axis_{k}": v for k, v in axes[row["spec"]].items()},
              **{k: v for k, v in row.items() if k != "spec" and not k.startswith("p_vs_")}}
             for row in compare_rows(runs, effects=effects_of_runs(runs))]
    return atomic_write_text(out / GRID_CSV, csv_text(table, _columns(table)))


def _note(res: GridResult, cell: Cell, r: dict[str, Any], echo: Echo) -> None:
    res.cells.append({"label": cell.label, "id": cell.id, **{k: r[k] for k in ("skipped", "seconds", "cpu_seconds")}})
    if r["skipped"]:
        res.skipped += 1
    else:
        res.computed += 1
    n = res.computed + res.skipped
    what = "already done" if r["skipped"] else f"done in {r['seconds']:.1f} s"
    extra = f" (c* = {r['c_star']:.6g})" if "c_star" in r and not r["skipped"] else ""
    echo(f"[{n}] {cell.label}: {what}{extra}")


def _fail(res: GridResult, cell: Cell, e: BaseException | str, echo: Echo) -> None:
    msg = str(e).strip().splitlines()[-1] if str(e).strip() else type(e).__name__
    record_failure(cell, msg)
    res.failed[cell.name] = f"{cell.kind}: {msg}"
    echo(f"FAILED {cell.label}: {msg}")


def _run_local(cells: list[Cell], echo: Echo) -> GridResult:
    res = GridResult()
    for cal in cells:
        cell = cal
        try:
            _note(res, cal, execute_cell(cal), echo)
            for cell in sweep_cells(cal):
                _note(res, cell, execute_cell(cell), echo)
            cell = merge_cell(cal)
            _note(res, cell, execute_cell(cell), echo)
            res.done.append(cal.name)
        except Exception as e:  # noqa: BLE001 - recorded per experiment; the grid goes on with the others
            _fail(res, cell, e, echo)
    return res


def _ray_cell(cell: Cell, threads: int, argv: list[str] | None = None, cwd: str | None = None) -> dict[str, Any]:
    """The Ray task: one cell in a worker process (the model stays cached in the worker for its next cells); its
    manifests record the driver's command line (`argv`, `cwd`), not the worker's."""
    import os

    import torch

    from tl_isokl.rundir import driver_command

    os.environ.setdefault("TQDM_DISABLE", "1")
    torch.set_num_threads(max(1, int(threads)))
    if argv is None:
        return execute_cell(cell)
    with driver_command(argv, cwd or ""):
        return execute_cell(cell)


def _run_ray(cells: list[Cell], echo: Echo, *, address: str | None, gpus: float, cpus: float, retries: int,
             fn: Callable = _ray_cell) -> GridResult:
    try:
        import ray
    except ImportError:
        raise GridError('--engine ray needs Ray: pip install "tl-isokl[ray]" (or pip install ray)') from None
    if not ray.is_initialized():
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(include_dashboard=False, log_to_driver=False)
    task = ray.remote(fn).options(num_cpus=cpus, num_gpus=gpus, max_retries=int(retries))
    res = GridResult()
    pending: dict[Any, tuple[Cell, int]] = {}
    groups_left: dict[str, int] = {}

    def submit(cell: Cell) -> None:
        pending[task.remote(cell, max(1, int(cpus)), list(sys.argv), str(Path.cwd()))] = (cell, 0)

    for c in cells:
        submit(c)
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        cell, _ = pending.pop(ref)
        try:
            r = ray.get(ref)
        except Exception as e:  # noqa: BLE001 - a RayTaskError wraps the cell's own error
            cause = getattr(e, "cause", None) or e
            _fail(res, cell, cause, echo)
            continue
        _note(res, cell, r, echo)
        if cell.kind == "calibrate":
            subs = sweep_cells(cell)
            groups_left[cell.name] = len(subs)
            for c in subs:
                submit(c)
        elif cell.kind == "sweep":
            groups_left[cell.name] -= 1
            if groups_left[cell.name] == 0:
                submit(merge_cell(cell))
        else:
            res.done.append(cell.name)
    return res


# ------------------------------------------------------------------------------------------------ sweep, compare


def _absolute(s):
    """The settings with every path absolute: a Ray worker need not share the driver's working directory (on a
    cluster the files must be where every node mounts them)."""
    from tl_isokl.vector_formats import VectorSource

    def ab(p):
        if p is None:
            return None
        if isinstance(p, VectorSource):
            return replace(p, path=ab(p.path))
        return Path(p).expanduser().resolve()

    kw = {k: ab(getattr(s, k)) for k in ("out", "heldout_prompts", "calibration_prompts", "probe_file",
                                         "vector_path", "calibration_path")}
    if s.model is not None and Path(str(s.model)).expanduser().exists():  # a local model folder
        kw["model"] = str(Path(str(s.model)).expanduser().resolve())
    if s.chat_template not in ("auto", "none") and Path(s.chat_template).expanduser().is_file():
        kw["chat_template"] = str(Path(s.chat_template).expanduser().resolve())
    return replace(s, **kw)


def experiment_cells(settings: Sequence[Any], engine: Engine, *, root: str | Path | None = None,
                     echo: Echo = lambda _: None) -> list[Cell]:
    """The calibrate cells of ordinary sweep experiments (ExperimentSettings; `tl-isokl sweep`: one, `compare`:
    one per spec), each checked first as the sweep checks it before loading a model (`sweep_inputs`; the default
    folder is the sweep's). --fresh is applied here, once, by the driver; the cells themselves only resume.
    `root`: the folder holding the run directories, bookkeeping in root/.grid/ (compare); None: each run
    directory keeps its own in RUN/.grid/ (sweep), so nothing is written beside it."""
    import shutil

    from tl_isokl.experiment import sweep_inputs
    from tl_isokl.identity import clear_run

    cells = []
    for s in settings:
        inp = sweep_inputs(s)
        s = replace(_absolute(replace(s, out=inp.out)), alphas=inp.alphas, fresh=False, vector=inp.file_vec,
                    extra={**s.extra, "engine": Engine.of(engine).name})  # the manifest records the engine
        out = Path(s.out)
        if root is None:
            cell = Cell("calibrate", out.name, out.parent, s, state=out / STATE_DIR)
        else:
            base = Path(root).resolve()
            cell = Cell("calibrate", out.relative_to(base).as_posix(), base, s)
        if inp.state.fresh:
            removed = clear_run(out)
            shutil.rmtree(cell.state_dir, ignore_errors=True)
            if removed:
                echo(f"--fresh: removed {len(removed)} tl-isokl file(s) from {out}")
        cells.append(cell)
    return cells


def run_experiments(settings: Sequence[Any], engine: Engine | str, *, root: str | Path | None = None,
                    echo: Echo = lambda _: None, ray_task: Callable[[Cell, int], dict] | None = None) -> list[Path]:
    """Sweep experiments as cells on `engine` (`experiment_cells`, `run_cells`); their run directories.
    IsoKLError naming the first failed cell (the others' finished cells are kept: rerunning resumes)."""
    engine = Engine.of(engine)
    cells = experiment_cells(settings, engine, root=root, echo=echo)
    res = run_cells(cells, engine, echo=echo, ray_task=ray_task)
    if res.failed:
        name, err = next(iter(res.failed.items()))
        some = f"{len(res.failed)} of {len(cells)} experiments failed, e.g. " if len(cells) > 1 else ""
        kind, _, msg = err.partition(": ")
        raise IsoKLError(f"{some}{name}: its {kind} cell failed: {msg}; fix it and rerun the same command (finished "
                         f"cells are kept)")
    return [c.run_dir for c in cells]


def run_sweep(s, engine: Engine | str, *, echo: Echo = lambda _: None, warn: Echo = lambda _: None,
              ray_task: Callable[[Cell, int], dict] | None = None):
    """`tl-isokl sweep --engine ray`: the sweep as a grid of one experiment (calibrate cell, alpha-group cells,
    merge: figures and report included) into the run directory the sweep would write; then the sweep's summary
    and warnings. Returns the loaded Run."""
    from tl_isokl.experiment import tell_sweep
    from tl_isokl.rundir import RunDir, load_run

    (path,) = run_experiments([s], engine, echo=echo, ray_task=ray_task)
    run = load_run(path)
    tell_sweep(run, run.calibration or {}, echo=echo, warn=warn)
    if s.figures:
        echo(f"report {RunDir(path).report_path}")
    return run


# ------------------------------------------------------------------------------------------------ status


def _experiments(out: Path) -> list[tuple[str, Path, Path, list[float] | None, dict]]:
    """(name, run directory, bookkeeping folder, planned alphas or None, axes) of every experiment under `out`:
    from DIR/grid.json (`tl-isokl grid`), else from the bookkeeping of `sweep --engine ray` (RUN/.grid/) or
    `compare --engine ray` (OUT/.grid/<spec>/), whose alphas are known once the calibrate cell wrote its plan."""
    from tl_isokl.files import read_json

    if (out / GRID_JSON).is_file():
        index = read_json(out / GRID_JSON, kind=dict)
        return [(name, out / name, out / STATE_DIR / name, [float(a) for a in info.get("alphas", [])],
                 info.get("axes", {})) for name, info in sorted(index.get("experiments", {}).items())]
    state = out / STATE_DIR
    if not state.is_dir():
        raise GridError(f"{out} is not a grid folder (no {GRID_JSON}) nor a sweep or compare run made with --engine "
                        f"(no {STATE_DIR}/); pass the --out DIR of `tl-isokl grid`, `sweep --engine` or `compare "
                        f"--engine`")

    def is_state(d: Path) -> bool:
        return (d / PLAN).is_file() or (d / FAILED).is_file() or any(d.glob("*.lock"))

    found = [(out.name, out, state)] if is_state(state) else \
        [(d.relative_to(state).as_posix(), out / d.relative_to(state), d)
         for d in sorted(p for p in state.rglob("*") if p.is_dir() and p.name != "shards" and is_state(p))]
    rows = []
    for name, run_dir, d in found:
        plan = read_plan(d)
        rows.append((name, run_dir, d, [float(a) for a in plan["alphas"]] if plan and "alphas" in plan else None,
                     {}))
    return rows


def status(out: str | Path) -> list[dict[str, Any]]:
    """Per experiment of a grid folder, or of a sweep / compare run with --engine ray (`_experiments`): state
    (done / failed / pending), alpha cells written of planned, whether calibrated, and the last failure."""
    from tl_isokl.files import read_json
    from tl_isokl.rundir import RunDir

    rows = []
    for name, run_dir, state_dir, alphas, axes in _experiments(Path(out)):
        rd = RunDir(run_dir)
        planned = alphas or []
        have = sum(rd.has_cell(a) for a in planned)
        merged = False
        if alphas is not None and (state_dir / MERGED).is_file() and rd.summary_path.is_file():
            try:
                merged = [float(a) for a in read_json(state_dir / MERGED, kind=dict).get("alphas", [])] == alphas
            except IsoKLError:
                merged = False
        failed = read_json(state_dir / FAILED, kind=dict) if (state_dir / FAILED).is_file() else None
        state = "done" if merged else "failed" if failed else "pending"
        rows.append({"experiment": name, "state": state, "calibrated": rd.calibration_path.is_file(),
                     "cells": have, "alphas": len(planned) if alphas is not None else "?", "merged": merged,
                     "axes": axes, "error": None if failed is None else f"{failed.get('cell')}: {failed.get('error')}"})
    return rows


def format_status(rows: Sequence[Mapping[str, Any]]) -> str:
    counts = {k: sum(r["state"] == k for r in rows) for k in ("done", "pending", "failed")}
    lines = [f"{r['state']:<8} cal={'yes' if r['calibrated'] else 'no ':<3} cells {r['cells']}/{r['alphas']}  "
             f"{r['experiment']}" + (f"  ({r['error']})" if r["error"] else "") for r in rows]
    lines.append(f"{len(rows)} experiments: {counts['done']} done, {counts['pending']} pending, "
                 f"{counts['failed']} failed")
    return "\n".join(lines)
