"""Exceptions of ptqsam; the CLI turns each into one clear line and a non-zero exit."""


class PtqsamError(Exception):
    """Base of every error ptqsam raises on bad input."""


class ConfigError(PtqsamError):
    """A config file or option is malformed; the message names the key."""


class CheckpointError(PtqsamError):
    """A checkpoint is missing, unreadable, or belongs to another model type."""


class DataError(PtqsamError):
    """A dataset, annotation or detections file is missing or malformed."""


class RecipeError(PtqsamError):
    """A recipe is unknown or malformed, or calibrated state does not match it."""


class CalibrationError(PtqsamError):
    """A calibration pass cannot proceed (inconsistent captures, a degenerate objective, ...)."""


class AnalysisError(PtqsamError):
    """Activation-analysis or plot input is missing, empty, non-finite or malformed."""


class DistributedError(PtqsamError):
    """A process of a distributed run failed or was killed, or the run cannot be distributed."""


class AllocationError(PtqsamError):
    """A bit allocation cannot meet its budget, or its inputs cannot give what it is asked for."""
