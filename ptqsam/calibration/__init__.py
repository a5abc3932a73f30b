"""Calibration: run the passes a recipe needs over a few images, save the calibrated state."""

from ptqsam.calibration.runner import CalibrationReport, calibrate
from ptqsam.calibration.saved import calibrated_quantizing, load_calibrated, save_calibrated
from ptqsam.data.samples import CalibrationSample, calibration_samples, choose_image_ids
from ptqsam.passes import SampleLoop

__all__ = ["CalibrationReport", "CalibrationSample", "SampleLoop", "calibrate", "calibrated_quantizing", "calibration_samples",
           "choose_image_ids", "load_calibrated", "save_calibrated"]
