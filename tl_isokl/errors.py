"""Errors and warnings. The library raises these; the CLI turns them into one-line messages.

Every message names the bad value and the fix, because the user reads it once, in a terminal, mid-experiment.
"""


class IsoKLError(ValueError):
    """Base class: bad input or a state the user can fix."""


class ModelLoadError(IsoKLError):
    """The model name or folder could not be loaded (not cached, not a model, no network)."""


class VectorMismatchError(IsoKLError):
    """A steering vector does not fit the model it is applied to (d_model, layer)."""


class CalibrationError(IsoKLError):
    """The calibration target could not be bracketed inside the coefficient limits."""


class SettingsError(IsoKLError):
    """Settings that contradict each other before anything runs (e.g. held-out prompts that are also
    calibration prompts); the CLI reports these as usage errors (exit status 2)."""


class RunDirError(IsoKLError):
    """A run directory is missing, incomplete or belongs to a different configuration."""


class IsoKLWarning(UserWarning):
    """Legal but dubious: a non-monotone statistic, a pinned bracket, few tokens pooled."""
