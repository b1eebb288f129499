"""tl-isokl: give every activation-steering method the same per-token KL budget, then measure what it buys.

Data flow, in the order of this list: load a model -> extract a direction (methods: extractor + operator) -> steer
-> roll out -> teacher-forced forward (per-token KL, fork probe) -> calibrate c* -> sweep alpha into a run
directory -> survival / statistics -> figures / report / inspection. `tl_isokl.experiment` runs calibrate and sweep
from settings, as the CLI does.

    >>> import tl_isokl as ik
    >>> model = ik.load_model()                                   # embedded test bed, offline
    >>> pos, neg = ik.default_concepts(model)                     # cheerful / gloomy
    >>> vec = ik.extract(model, pos, neg, method="mean_diff")     # middle layer
    >>> ids, prompts = ik.default_prompts(model, "calibration")
    >>> cal = ik.calibrate(model, vec, prompts, window=64)        # c*: p95 per-token KL = 1 nat
"""

from tl_isokl.errors import CalibrationError, IsoKLError, IsoKLWarning
from tl_isokl.model import load_model
from tl_isokl.vector import Gate, SteeringVector
from tl_isokl.vector_formats import VectorSource, read_vector
from tl_isokl.extract import extract
from tl_isokl.steer import Steering, steer
from tl_isokl.records import Rollout
from tl_isokl.rollout import rollout
from tl_isokl.kl import per_token_kl
from tl_isokl.calibrate import CalibrationResult, calibrate, calibrate_nll_delta
from tl_isokl.probe import AnswerProbe, Probe, ProbeSpec, probe
from tl_isokl.probe_presets import probe_spec
from tl_isokl.rollout import Sampling
from tl_isokl.sweep import sweep
from tl_isokl.rundir import load_run
from tl_isokl.prompt_sets import default_concepts, default_prompts
from tl_isokl.survival import kaplan_meier, km_curves, logrank, survival_table
from tl_isokl.report import draw_figures, report_run, write_report
from tl_isokl.compare import run_compare
from tl_isokl.progress import Progress
from tl_isokl.effect import concept_axis, lexicon_score

__all__ = [
    "load_model", "SteeringVector", "Gate", "read_vector", "VectorSource", "extract", "steer", "Steering",
    "rollout", "Rollout", "Sampling", "per_token_kl", "calibrate", "calibrate_nll_delta", "CalibrationResult", "ProbeSpec", "Probe",
    "AnswerProbe", "probe_spec", "probe", "sweep",
    "load_run", "default_prompts", "default_concepts", "km_curves", "kaplan_meier", "logrank", "survival_table",
    "draw_figures", "write_report", "report_run", "run_compare", "concept_axis", "lexicon_score", "Progress", "IsoKLError", "CalibrationError", "IsoKLWarning",
]
