"""Calibration: fit a selector pack layer by layer on a frozen model (settings in `CalibrationConfig`)."""

from .._lazy import lazy_attributes
from .config import CalibrationConfig

__getattr__, __dir__ = lazy_attributes(__name__, {"calibrate": ".pipeline"})
__all__ = ["CalibrationConfig", "calibrate"]
