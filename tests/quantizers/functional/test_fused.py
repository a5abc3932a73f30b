"""Fused kernels: the same values as the eager kernels at their default size threshold, written into
the input when it is handed over, and a clean fallback when compilation fails.

(Every other functional test also runs on the fused kernels: see this folder's conftest.)
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest
import torch

from quantizers import Mode, QuantSpec, build_quantizer
from quantizers.functional import fused
from quantizers.functional.fused import MIN_NUMEL, FusedKernel, fused_kernels
from quantizers.functional.log import LogGrid, log_fake_quantize
from quantizers.functional.twin import TwinGrid, twin_fake_quantize
from quantizers.functional.uniform import fake_quantize
from quantizers.spec import Granularity

DEVICES = ["cpu", pytest.param("cuda", marks=pytest.mark.cuda)]


def _attention(device: str) -> torch.Tensor:
    """Post-softmax rows with a few subnormal and zero entries, above the fused threshold."""
    logits = torch.randn(4, 256, 512, generator=torch.Generator().manual_seed(0)) * 8
    probs = torch.softmax(logits, dim=-1)
    probs[0, 0, :4] = torch.tensor([0.0, 1e-40, 3e-39, 1e-45])
    return probs.to(device)


def _cases(device: str) -> list[tuple[str, torch.Tensor, callable]]:
    probs = _attention(device)
    weights = torch.randn(768, 768, generator=torch.Generator().manual_seed(1)).to(device)
    channel_scale = (weights.abs().amax(dim=1) / 127).contiguous()
    zeros = torch.zeros(768, dtype=torch.int32, device=device)
    scale = torch.tensor([float(probs.max()) / 255], device=device)
    zero = torch.tensor([3], dtype=torch.int32, device=device)
    return [
        ("uniform per tensor", probs, lambda x, o: fake_quantize(x, scale, zero, 0, 255, overwrite=o)),
        ("uniform per channel", weights, lambda x, o: fake_quantize(
            x, channel_scale, zeros, -128, 127, Granularity("channel", axis=0), overwrite=o)),
        ("uniform per channel, axis 1", weights, lambda x, o: fake_quantize(
            x, channel_scale, zeros, -8, 7, Granularity("channel", axis=1), overwrite=o)),
        *[(f"log tau={tau} {bits} bits", probs, lambda x, o, g=LogGrid.build(0.9, tau, bits): log_fake_quantize(
            x, g, overwrite=o)) for tau in (1, 2, 4) for bits in (4, 8)],
        ("twin softmax", probs, lambda x, o: twin_fake_quantize(x, TwinGrid.softmax(8, 5), overwrite=o)),
        ("twin gelu", weights, lambda x, o: twin_fake_quantize(x, TwinGrid.gelu(6, 0.05), overwrite=o)),
    ]


@pytest.mark.parametrize("device", DEVICES)
def test_fused_kernels_equal_the_eager_ones_and_overwrite_their_input(device: str) -> None:
    assert _attention("cpu").numel() >= MIN_NUMEL
    for name, x, run in _cases(device):
        with fused_kernels(enabled=False):
            expected = run(x, False)
        with fused_kernels():
            out = run(x, False)
            handed_over = x.clone()
            written = run(handed_over, True)
        assert torch.equal(out, expected), name
        assert torch.equal(written, expected), name
        assert written.data_ptr() == handed_over.data_ptr(), name


def test_small_tensors_keep_the_eager_kernels(monkeypatch: pytest.MonkeyPatch) -> None:
    called = []
    monkeypatch.setattr(fused.FusedKernel, "__call__", lambda self, *args: called.append(self.name))
    x = torch.rand(1000)
    fake_quantize(x, torch.tensor([0.01]), torch.tensor([0]), 0, 255)
    log_fake_quantize(x, LogGrid.build(1.0, 2, 4))
    assert called == []


def test_a_failing_compiler_falls_back_once_with_one_log_line(monkeypatch: pytest.MonkeyPatch,
                                                               caplog: pytest.LogCaptureFixture) -> None:
    calls = []

    def no_compiler(fn, **options):
        def compiled(*args):
            calls.append(1)
            if len(calls) > 1:  # the first compiled call works, the next fails (e.g. a new variant)
                raise RuntimeError("no C++ compiler found\nsecond line")
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", no_compiler)
    kernel = FusedKernel(lambda x, out: out.copy_(x + x))
    x = torch.ones(MIN_NUMEL)
    assert kernel.wants(x)
    with caplog.at_level(logging.WARNING, logger="quantizers"):
        assert torch.equal(kernel(x, torch.empty_like(x)), x + x)
        assert torch.equal(kernel(x, torch.empty_like(x)), x + x)  # fails compiled, runs eagerly: same values
        assert torch.equal(kernel(x, torch.empty_like(x)), x + x)  # eager from now on, no new line
    assert not kernel.wants(x) and len(calls) == 2
    assert len(caplog.records) == 1 and "no C++ compiler found" in caplog.text and "second line" not in caplog.text


def test_an_overwriting_call_passes_the_tensor_once(monkeypatch: pytest.MonkeyPatch) -> None:
    seen = []

    def recording(fn, **options):
        def compiled(*args):
            seen.append(len(args))
            return fn(*args)
        return compiled

    monkeypatch.setattr(torch, "compile", recording)
    kernel = FusedKernel(lambda x, out, two: out.copy_(x * two))
    x = torch.full((MIN_NUMEL,), 3.0)
    kernel(x, torch.empty_like(x), torch.tensor(2.0))
    kernel(x, x.view(-1), torch.tensor(2.0))
    assert seen == [3, 2] and bool((x == 6.0).all())


def test_the_environment_switch_and_the_context_manager_turn_it_off() -> None:
    x = torch.ones(MIN_NUMEL)
    kernel = FusedKernel(lambda x: x)
    with fused_kernels(enabled=False):
        assert not kernel.wants(x)
    assert kernel.wants(x) == fused._settings["enabled"]
    assert not kernel.wants(x.double()) and not kernel.wants(torch.ones(2, MIN_NUMEL).T)


@pytest.mark.parametrize("tau", [1, 2, 4, 8])
@pytest.mark.parametrize("bits", [3, 5, 8])
@pytest.mark.parametrize("scale", [1.0, 0.37, 3e-30])
def test_the_binade_kernel_of_power_of_two_taus_equals_the_table_lookup(tau: int, bits: int, scale: float) -> None:
    grid = LogGrid.build(scale, tau, bits)
    assert LogGrid.build(scale, 3, bits).binades is None
    if 2**bits >= 2 * tau:  # codes for two binades at least: one is whole
        assert grid.binades is not None
    g = torch.Generator().manual_seed(tau * 100 + bits)
    spread = torch.exp2(-torch.rand(1 << 15, generator=g) * 160) * scale * 2  # across every level, into subnormals
    boundaries = grid.boundaries
    near = torch.cat([boundaries, torch.nextafter(boundaries, torch.zeros(())), grid.levels])
    x = torch.cat([spread, near, torch.tensor([0.0, 1e-45, 3e38])])
    with fused_kernels(enabled=False):
        expected = log_fake_quantize(x, grid)
    with fused_kernels(min_numel=0):
        assert torch.equal(log_fake_quantize(x, grid), expected)


def _learning_cases() -> list[tuple[str, callable]]:
    """Quantizers whose qparams or rounding learn (reconstruction), each with its learned tensors."""
    weights = torch.randn(64, 512, generator=torch.Generator().manual_seed(2))

    def uniform(granularity: Granularity, adaround: bool):
        def build():
            q = build_quantizer(QuantSpec(bits=4, symmetric=True, granularity=granularity))
            q.observe(weights)
            q.finalize()
            return q, list(q.start_adaround(weights).parameters()) if adaround else q.learn(scale=True)
        return build

    def log():
        q = build_quantizer(QuantSpec(quantizer="log", bits=4))
        q.observe(_attention("cpu")[:1])
        q.finalize()
        return q, q.learn()

    return [("lsq per tensor", uniform(Granularity("tensor"), False)),
            ("lsq per channel", uniform(Granularity("channel", axis=0), False)),
            ("adaround", uniform(Granularity("channel", axis=0), True)),
            ("learned log scale", log)]


@pytest.mark.parametrize("case", range(4))
@pytest.mark.parametrize("overwrite", [False, True])
def test_learned_qparams_and_rounding_keep_their_gradients_on_the_fused_path(case: int, overwrite: bool) -> None:
    name, build = _learning_cases()[case]
    x = (torch.randn(64, 512, generator=torch.Generator().manual_seed(3)) if "log" not in name
         else _attention("cpu")[:1].contiguous())
    results = []
    for enabled in (False, True):
        with fused_kernels(enabled=enabled, min_numel=0):
            quantizer, learned = build()
            quantizer.mode = Mode.QUANTIZE
            out = quantizer(x.clone(), overwrite=overwrite)
            out.pow(2).sum().backward()
            results.append((out.detach(), [p.grad for p in learned]))
    (eager, eager_grads), (fused_out, fused_grads) = results
    assert torch.equal(fused_out, eager), name
    assert all(g is not None and bool(g.abs().sum() > 0) for g in fused_grads), name
    assert all(torch.equal(a, b) for a, b in zip(fused_grads, eager_grads)), name


def test_torchs_no_cuda_runtime_notice_is_silenced_and_nothing_else(tmp_path) -> None:
    """A CUDA build of torch on a machine without a GPU logs "No CUDA runtime is found, using
    CUDA_HOME=..." when Inductor imports torch.utils.cpp_extension (every process that compiles a
    kernel): once the quantizers are imported, that one line is filtered, other lines are not."""
    probe = ("import logging, torch; logging.basicConfig(); torch.cuda.is_available = lambda: False; {imports}"
             "import torch.utils.cpp_extension as extension; extension._find_cuda_home(); "
             "logging.getLogger('torch.utils.cpp_extension').warning('another line')")

    def stderr(imports: str) -> str:
        return subprocess.run([sys.executable, "-c", probe.format(imports=imports)], capture_output=True, text=True,
                              env={**os.environ, "CUDA_HOME": str(tmp_path)}, check=True).stderr

    assert "No CUDA runtime is found" in stderr("")  # what torch prints on its own
    quiet = stderr("import quantizers; ")
    assert "No CUDA runtime is found" not in quiet and "another line" in quiet


def test_memory_order_finds_the_layout_of_dense_tensors_only():
    base = torch.zeros(2, 3, 4, 5)
    assert fused.memory_order(base) == (0, 1, 2, 3)
    assert fused.memory_order(base.permute(0, 2, 3, 1)) == (0, 3, 1, 2)
    assert base.permute(0, 2, 3, 1).permute(fused.memory_order(base.permute(0, 2, 3, 1))).is_contiguous()
    assert fused.memory_order(base[:, :2]) is None  # gaps: a slice
    assert fused.memory_order(torch.zeros(4, 1).expand(4, 6)) is None  # overlaps: an expanded view


@pytest.mark.parametrize("overwrite", [False, True])
@pytest.mark.parametrize("granularity", [Granularity(), Granularity("channel", 1), Granularity("channel", 3)])
def test_permuted_dense_tensors_take_the_fused_kernel_in_their_own_layout(granularity, overwrite, monkeypatch):
    calls = []
    original = FusedKernel.__call__
    monkeypatch.setattr(FusedKernel, "__call__", lambda self, *a: calls.append(self.name) or original(self, *a))
    g = torch.Generator().manual_seed(3)
    x = (torch.randn(4, 8, 256, 40, generator=g) * 3).transpose(1, 3)  # (4, 40, 256, 8), dense, not contiguous
    groups = 1 if granularity.kind == "tensor" else x.shape[granularity.axis]
    scale, zero = torch.rand(groups, generator=g) * 0.05 + 0.01, torch.zeros(groups, dtype=torch.int32)
    expected = (torch.fake_quantize_per_tensor_affine(x, float(scale), 0, -128, 127) if groups == 1
                else torch.fake_quantize_per_channel_affine(x, scale, zero, granularity.axis, -128, 127))
    given = x.clone() if overwrite else x
    out = fake_quantize(given, scale, zero, -128, 127, granularity, overwrite=overwrite)
    assert calls == ["uniform"]
    assert torch.equal(out, expected) and out.stride() == x.stride()
    assert overwrite == (out.data_ptr() == given.data_ptr())
