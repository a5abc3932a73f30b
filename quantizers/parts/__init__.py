"""Parts a quantizer is made of and that can be swapped: rounding (nearest, soft or fixed)."""
