"""Query-chunked ViT attention (block reconstruction's memory): the same values and gradients as
whole maps, the same QDrop masks when a chunk is recomputed in the backward pass, and no whole
attention map kept for it."""

from __future__ import annotations

import pytest
import torch

from ptqsam.calibration import calibrate
from ptqsam.instrument import attached_quantizers, dropping, quantizing
from ptqsam.instrument import attention
from ptqsam.instrument.attention import chunked_attention
from quantizers import Mode

BLOCK = "image_encoder.blocks.2"  # the testbed's first global-attention block: 16 × 16 = 256 query rows
CHUNK = 64


@pytest.fixture(scope="module")
def block(two_samples, random_testbed_module):
    """A global-attention block of the W4A4 minmax testbed, its activation scales learnable."""
    model = random_testbed_module()
    calibrate(model, "minmax", 4, 4, two_samples, progress=False)
    names = [n for n in attached_quantizers(model) if n.startswith(BLOCK + ".attn.") and not n.endswith("weight")]
    params = [p for n in names for p in attached_quantizers(model)[n].learn()]
    assert params, "the block's activation quantizers learn their scales"
    return model, names, params


def _step(block, chunk: int | None, drop: float = 0.0, seed: int = 0):
    """One forward and backward pass of the block's attention: output, input and scale gradients,
    dropped elements and the drop generators' states afterwards."""
    model, names, params = block
    module = model.get_submodule(BLOCK).attn
    x = torch.randn(1, 16, 16, module.qkv.in_features, generator=torch.Generator().manual_seed(seed),
                    requires_grad=True)
    for p in params:
        p.grad = None
    with dropping(model, drop, names, seed=seed) as dropped, quantizing(model, names, allow_drop=True), \
            chunked_attention(module, chunk):
        for q in dropped.values():
            q.dropped_elements = 0
        out = module(x)
        out.square().sum().backward()
        counts = [q.dropped_elements for q in dropped.values()]
        states = [q.drop_generator.get_state() for q in dropped.values()]
    return out.detach(), [x.grad] + [p.grad.clone() for p in params], counts, states


def test_chunks_give_the_whole_maps_values_and_gradients(block):
    out, grads, _, _ = _step(block, None)
    chunked_out, chunked_grads, _, _ = _step(block, CHUNK)
    torch.testing.assert_close(chunked_out, out, rtol=1e-5, atol=1e-6)
    for chunked, whole in zip(chunked_grads, grads):
        torch.testing.assert_close(chunked, whole, rtol=1e-4, atol=1e-6)


def test_a_recomputed_chunk_draws_the_masks_of_its_forward(block, monkeypatch):
    calls = []
    real = attention.checkpoint

    def counted(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(attention, "checkpoint", counted)
    out, grads, counts, states = _step(block, CHUNK, drop=0.5)
    assert len(calls) == 256 // CHUNK
    # the same chunks kept whole for the backward pass (nothing recomputed): the same gradients
    monkeypatch.setattr(attention, "checkpoint", lambda function, *args, **kwargs: function(*args))
    kept_out, kept_grads, kept_counts, kept_states = _step(block, CHUNK, drop=0.5)
    assert torch.equal(out, kept_out)
    for recomputed, kept in zip(grads, kept_grads):
        assert torch.equal(recomputed, kept)
    # the recomputation neither counts its drops again nor moves the generators on
    assert counts == kept_counts and min(counts) > 0
    assert all(torch.equal(a, b) for a, b in zip(states, kept_states))


def test_no_whole_attention_map_is_kept_for_the_backward_pass(block):
    model, names, _ = block
    module = model.get_submodule(BLOCK).attn
    whole_map = module.num_heads * 256 * 256

    def largest_saved(chunk: int | None) -> int:
        sizes = []

        def pack(tensor):
            sizes.append(tensor.numel())
            return tensor

        x = torch.randn(1, 16, 16, module.qkv.in_features, requires_grad=True)
        with quantizing(model, names), chunked_attention(module, chunk), \
                torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            module(x).sum().backward()
        return max(sizes)

    assert largest_saved(None) >= whole_map
    assert largest_saved(CHUNK) < whole_map // 2


def test_chunking_is_off_without_gradients_and_restored_on_exit(block):
    model, names, _ = block
    module = model.get_submodule(BLOCK).attn
    x = torch.randn(1, 16, 16, module.qkv.in_features)
    with quantizing(model, names), torch.no_grad():
        whole = module(x)
        with chunked_attention(model, CHUNK):
            assert module.query_chunk == CHUNK
            assert torch.equal(module(x), whole)
    assert module.query_chunk is None


def test_observers_and_kinds_not_elementwise_see_whole_maps_said_once(block, monkeypatch, caplog):
    model, names, _ = block
    module = model.get_submodule(BLOCK).attn
    calls = []
    monkeypatch.setattr(attention, "checkpoint", lambda function, *args, **kwargs: calls.append(1) or function(*args))
    x = torch.randn(1, 16, 16, module.qkv.in_features, requires_grad=True)
    probs = module.probs_site.attached
    with chunked_attention(module, CHUNK), quantizing(model, names):
        module(x)
        assert len(calls) == 256 // CHUNK
        calls.clear()
        with monkeypatch.context() as patch:
            patch.setattr(type(probs), "ELEMENTWISE", False)  # a kind that reads the tensor at hand
            module(x)
            module(x)
        assert not calls
        probs.mode = Mode.OBSERVE  # an observer must see whole maps
        module(x)
    assert not calls
    assert type(probs).ELEMENTWISE
    assert caplog.text.count("need whole attention maps") == 1
