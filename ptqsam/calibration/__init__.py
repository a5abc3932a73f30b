"""Calibration: choose images, run the passes a recipe needs, save the calibrated state."""

from ptqsam.calibration.runner import CalibrationReport, calibrate
from ptqsam.calibration.saved import load_calibrated, save_calibrated
from ptqsam.calibration.samples import CalibrationSample, calibration_samples, choose_image_ids

__all__ = ["CalibrationReport", "CalibrationSample", "calibrate", "calibration_samples", "choose_image_ids",
           "load_calibrated", "save_calibrated"]
