"""``kernel_path``: a test (module) using it runs twice, on the eager kernels and on the
fused (compiled) ones.

The fused kernels normally start at :data:`~quantizers.functional.fused.MIN_NUMEL` elements; here
they take every float32 tensor, so the oracle and property tests judge both paths.
"""

from __future__ import annotations

from typing import Iterator

import pytest

from quantizers.functional.fused import fused_kernels


@pytest.fixture(params=["eager", "fused"])
def kernel_path(request: pytest.FixtureRequest) -> Iterator[str]:
    with fused_kernels(enabled=request.param == "fused", min_numel=0):
        yield request.param
