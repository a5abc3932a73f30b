"""Parts a quantizer is made of and that can be swapped: rounding (nearest, soft, fixed, or codes
chosen by a calibration pass)."""
