"""Block reconstruction after calibration: AdaRound weights, LSQ activation scales, QDrop (BRECQ,
QDrop, PTQ4SAM-L), one unit at a time in model order (:mod:`.reconstruct`); its settings
(:mod:`.config`, part of a recipe); what one unit sees over the calibration set (:mod:`.cache`)."""

from ptqsam.reconstruction.config import ReconstructionConfig

__all__ = ["ReconstructionConfig"]
