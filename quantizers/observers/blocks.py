"""Walk a ``(groups, elements)`` view in bounded blocks so temporaries stay small on huge tensors."""

from __future__ import annotations

from typing import Iterator

import torch

from quantizers.functional.chunked import SERIAL_CHUNK

#: Elements per block: below ATen's parallel grain size, so each op on a block runs serially inside
#: the CPU cache (see :mod:`quantizers.functional.chunked`); temporaries stay around 128 KiB.
BLOCK_ELEMENTS = SERIAL_CHUNK


def row_blocks(rows: torch.Tensor, max_elements: int | None = None) -> Iterator[tuple[slice, torch.Tensor]]:
    """Yield ``(group_slice, block)`` covering the 2-D ``rows`` with at most ``max_elements`` each
    (default :data:`BLOCK_ELEMENTS`).

    Whole rows are batched together when a row fits in the budget; longer rows are cut into column
    chunks one row at a time. Blocks are views, so nothing is copied until the caller computes on
    one.
    """
    max_elements = max_elements or BLOCK_ELEMENTS
    groups, elements = rows.shape
    if elements <= max_elements:
        step = max(1, max_elements // max(elements, 1))
        for g0 in range(0, groups, step):
            yield slice(g0, min(g0 + step, groups)), rows[g0 : g0 + step]
        return
    for g in range(groups):
        for e0 in range(0, elements, max_elements):
            yield slice(g, g + 1), rows[g : g + 1, e0 : e0 + max_elements]
