"""Hybrid log-uniform grid (AHCPTQ's HLUQ): pure tensor functions.

With ``u = x − m`` (``m``: a shift putting the tensor's minimum at 0), ``L = 2^b`` codes split into
``L_log = L·g`` log codes and ``L_uni = L − L_log`` uniform codes:

- log region ``u ≤ s_log``: levels ``{0} ∪ {s_log·2^(−k), k = 0 … L_log − 1}``;
- uniform region ``u > s_log``: levels ``{s_log + j·s_uni, j = 0 … L_uni − 1}``;

``x̂ = level + m``, the level being the nearest one of the value's own region. ``s_log`` is both
the top log level and the first uniform level, so the grid holds exactly ``L`` distinct values.
Scales from the range: ``s_log = range·r``, ``s_uni = range·(1 − r)/((L − 1)(1 − g))``.

The reference code (Keio-CSG/AHCPTQ ``fake_hybrid_quantize_per_tensor_affine``) computes its
zero-code mask over the whole tensor while the uniform-region elements still hold their raw
values, so every uniform-region value with ``u ≥ L_log`` collapses to ``m + s_log``; here each
region only sees its own values. The reference also rounds log codes in the log domain
(``round(−log2(u/s_log))``, thresholds at ``s_log·2^(−k−½)``); here the log region rounds to the
nearest level (thresholds at the midpoints ``0.75·s_log·2^(−k)``), which lowers the error and makes
"nearest level of its own region" exact. Gradients are straight-through as in the reference:
inside the log grid ``∂x̂/∂s_log = 0``; the uniform part has LSQ's gradients for ``s_uni``.
"""

from __future__ import annotations

import torch

from quantizers.errors import QuantizationError
from quantizers.functional.uniform import round_ste
from quantizers.spec import check_bits


def hybrid_split(bits: int, grid_rate: float) -> tuple[int, int]:
    """``(L_log, L_uni)``: how ``2^bits`` codes split at grid rate ``g``; QuantizationError unless
    ``L·g`` is a whole number of codes leaving at least one uniform code."""
    levels = 2 ** check_bits(bits)
    log_codes = levels * grid_rate
    if not (log_codes == int(log_codes) and 1 <= log_codes <= levels - 1):
        raise QuantizationError(f"grid rate {grid_rate} does not split {levels} codes into whole log and uniform "
                                "parts")
    return int(log_codes), levels - int(log_codes)


def hybrid_scales(value_range: float, range_rate: float, grid_rate: float, bits: int) -> tuple[float, float]:
    """``(s_log, s_uni) = (range·r, range·(1 − r)/((L − 1)(1 − g)))``."""
    levels = 2 ** check_bits(bits)
    return value_range * range_rate, value_range * (1.0 - range_rate) / ((levels - 1) * (1.0 - grid_rate))


def hybrid_levels(scale_log: float, scale_uni: float, bits: int, grid_rate: float) -> torch.Tensor:
    """The levels of ``u`` (before the shift), ascending, float64: 0, the log levels, then the
    uniform levels above ``s_log`` (``2^bits`` values)."""
    log_codes, uni_codes = hybrid_split(bits, grid_rate)
    log_levels = scale_log * torch.exp2(-torch.arange(log_codes - 1, -1, -1, dtype=torch.float64))
    uni_levels = scale_log + scale_uni * torch.arange(1, uni_codes, dtype=torch.float64)
    return torch.cat([torch.zeros(1, dtype=torch.float64), log_levels, uni_levels])


def hybrid_fake_quantize(x: torch.Tensor, shift: torch.Tensor, scale_log: torch.Tensor, scale_uni: torch.Tensor,
                         bits: int, grid_rate: float) -> torch.Tensor:
    """``x̂``: each ``u = x − shift`` mapped to the nearest level of its region (see the module
    docstring); ``scale_log`` and ``scale_uni`` may be parameters (gradients straight-through)."""
    log_codes, uni_codes = hybrid_split(bits, grid_rate)
    u = x.float() - shift.float()
    s_log, s_uni = scale_log.float(), scale_uni.float()
    in_log = u <= s_log.detach()

    # log region: t = −log2(u/s_log) ≥ 0; the nearest of the levels at ⌊t⌋ and ⌊t⌋ + 1 (0 beyond)
    t = -torch.log2(torch.clamp(u, min=torch.finfo(torch.float32).tiny) / s_log)
    upper = torch.floor(t.detach().clamp(0.0, float(log_codes)))
    above = _log_level(upper, s_log.detach(), log_codes)
    below = _log_level(upper + 1, s_log.detach(), log_codes)
    code = torch.where(u.detach() - below < above - u.detach(), upper + 1, upper)
    log_value = torch.where(code < log_codes, s_log * torch.exp2(-(code + (t - t.detach()))), torch.zeros_like(u))

    # uniform region: j = clamp(round((u − s_log)/s_uni), 0, L_uni − 1), straight-through inside
    j = round_ste((u - s_log) / s_uni)
    inside = (j >= 0) & (j <= uni_codes - 1)
    j = torch.where(inside, j, j.detach().clamp(0, uni_codes - 1))
    uni_value = s_log + j * s_uni

    out = torch.where(in_log, log_value, uni_value) + shift.float()
    return out if x.dtype == torch.float32 else out.to(x.dtype)


def _log_level(code: torch.Tensor, scale_log: torch.Tensor, log_codes: int) -> torch.Tensor:
    """``s_log·2^(−code)`` for codes below ``L_log``, 0 from there on."""
    return torch.where(code < log_codes, scale_log * torch.exp2(-code), torch.zeros_like(code))
