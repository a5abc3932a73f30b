"""Attention blocks and the mask decoder with sites on their matmul operands.

Each class subclasses the original module and re-implements ``forward`` (``predict_masks`` for the
mask decoder) op for op, calling a site on every matmul operand and product. With no quantizer
attached the sites are identities and the outputs are bit-identical to the original module's.
``v`` always passes its site before ``probs``, which receives it as context.
"""

from __future__ import annotations

import contextlib
import logging
import math
from typing import Any, Iterator

import torch
from segment_anything.modeling.image_encoder import Attention as ViTAttention
from segment_anything.modeling.image_encoder import get_rel_pos
from segment_anything.modeling.mask_decoder import MaskDecoder
from segment_anything.modeling.transformer import Attention as TwoWayAttention
from torch.utils.checkpoint import checkpoint

from ptqsam.instrument.sites import Site
from ptqsam.instrument.units import Product
from ptqsam.models.tiny_vit import Attention as TinyViTAttention
from quantizers import Quantizer
from quantizers.modules.base import Mode, in_parts, overridden

log = logging.getLogger("ptqsam")


class AttentionSites:
    """Sites of an attention block: the q, k, v operands, the q@kᵀ logits, the post-softmax
    probabilities (called with v as context) and the attn@v context; its two products."""

    SITE_ROLES = {
        "query": "query",
        "key": "key",
        "value": "value",
        "logits": "output",
        "probs": "probs",
        "context": "output",
    }
    PRODUCTS = (
        Product("matmul", "query", "key", output="logits", b_transposed=True),
        Product("matmul", "probs", "value", output="context"),
    )
    query_site: Site
    key_site: Site
    value_site: Site
    logits_site: Site
    probs_site: Site
    context_site: Site


class SitedViTAttention(AttentionSites, ViTAttention):
    """SAM image-encoder attention. The query site sees ``q * scale`` (the original computes
    ``(q * scale) @ kᵀ``); the decomposed relative-position term uses the float ``q`` and is added
    to the logits after the logits site.

    While gradients flow and :attr:`query_chunk` is set (block reconstruction, see
    :func:`chunked_attention`), the logits → probs → context part runs over chunks of query rows,
    each recomputed in the backward pass (``torch.utils.checkpoint``) with the same QDrop masks:
    autograd then keeps no whole attention map (12 × 4096² per global block of SAM-B)."""

    #: query rows per chunk while gradients flow; None: the whole map at once
    query_chunk: int | None = None
    _said_whole = False

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        B, H, W, _ = x.shape
        qkv = self.qkv(x).reshape(B, H * W, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.reshape(3, B * self.num_heads, H * W, -1).unbind(0)
        v = self.value_site(v)
        q_hat, k_hat = self.query_site(q * self.scale), self.key_site(k)
        rel = _decomposed_rel_pos(q, self.rel_pos_h, self.rel_pos_w, (H, W)) if self.use_rel_pos else ()

        rows = H * W
        if self.query_chunk is None or rows <= self.query_chunk or not torch.is_grad_enabled() \
                or not self._rows_separable():
            context = self._attend(None, q_hat, k_hat, v, *rel)
        else:
            whole = q_hat.shape[0] * rows * k_hat.shape[1]
            context = torch.cat([self._checkpointed(whole, q_hat[:, a:a + self.query_chunk], k_hat, v,
                                                    *(r[:, a:a + self.query_chunk] for r in rel))
                                 for a in range(0, rows, self.query_chunk)], dim=1)
        x = self.context_site(context)
        x = x.view(B, self.num_heads, H, W, -1).permute(0, 2, 3, 1, 4).reshape(B, H, W, -1)
        return self.proj(x)

    def _attend(self, whole: int | None, q_hat: torch.Tensor, k_hat: torch.Tensor, v: torch.Tensor,
                rel_h: torch.Tensor | None = None, rel_w: torch.Tensor | None = None) -> torch.Tensor:
        """``probs @ v`` for the query rows of ``q_hat`` (``rel_h``/``rel_w``: their rel-pos terms),
        ``whole`` the elements of the whole map when these rows are a chunk of it."""
        with in_parts(self._map_quantizers(), whole):
            attn = self.logits_site(q_hat @ k_hat.transpose(-2, -1))
            if rel_h is not None:
                batch, rows, k_h = rel_h.shape
                attn = (attn.view(batch, rows, k_h, -1) + rel_h[:, :, :, None] + rel_w[:, :, None, :]).view(batch, rows, -1)
            return self.probs_site(attn.softmax(dim=-1), v) @ v

    def _checkpointed(self, *args: Any) -> torch.Tensor:
        quantizers = self._map_quantizers()
        return checkpoint(self._attend, *args, use_reentrant=False, context_fn=lambda: _replayed_drops(quantizers))

    def _map_quantizers(self) -> list[Quantizer]:
        return [q for q in (self.logits_site.attached, self.probs_site.attached) if q is not None]

    def _rows_separable(self) -> bool:
        """Whether the logits and probs quantizers treat each query row alike (one step per tensor,
        head or key), so the map may be quantized a chunk of rows at a time; when not, the whole
        map is kept (said once per module: memory grows with it)."""
        separable = all(_row_independent(site.attached) for site in (self.logits_site, self.probs_site))
        if not separable and not self._said_whole:
            self._said_whole = True
            log.warning("%s: its logits/probs quantizers need whole attention maps; computing them unchunked",
                        self.probs_site.name.rpartition(".")[0])
        return separable


def _decomposed_rel_pos(q: torch.Tensor, rel_pos_h: torch.Tensor, rel_pos_w: torch.Tensor,
                        size: tuple[int, int]) -> tuple[torch.Tensor, torch.Tensor]:
    """SAM's decomposed relative-position terms per query row: ``(rel_h, rel_w)`` of shapes
    (B, H·W, H) and (B, H·W, W), added to the logits of each row as in ``add_decomposed_rel_pos``."""
    h, w = size
    batch, _, dim = q.shape
    r_q = q.reshape(batch, h, w, dim)
    rel_h = torch.einsum("bhwc,hkc->bhwk", r_q, get_rel_pos(h, h, rel_pos_h))
    rel_w = torch.einsum("bhwc,wkc->bhwk", r_q, get_rel_pos(w, w, rel_pos_w))
    return rel_h.reshape(batch, h * w, h), rel_w.reshape(batch, h * w, w)


def _row_independent(quantizer: Quantizer | None) -> bool:
    """Whether ``quantizer`` may see a (heads, rows, keys) map a chunk of rows at a time: off, or
    quantizing elementwise with one step per tensor, per head (axis 0) or per key (axis 2)."""
    if quantizer is None or quantizer.mode is Mode.OFF:
        return True
    if quantizer.mode is not Mode.QUANTIZE or not quantizer.ELEMENTWISE:
        return False  # an observer must see whole maps; a kind may depend on the tensor at hand
    granularity = quantizer.spec.granularity
    return granularity.kind == "tensor" or (granularity.kind == "channel" and granularity.axis % 3 != 1)


def _replayed_drops(quantizers: list[Quantizer]) -> tuple[contextlib.AbstractContextManager, ...]:
    """``torch.utils.checkpoint`` contexts under which the recomputation draws the QDrop masks the
    forward drew (the quantizers' own generators, which checkpoint does not replay) and leaves the
    generators and the dropped-element counters as they were before it."""
    recorded: list[tuple] = []

    def snapshot() -> list[tuple]:
        return [(q, None if q.drop_generator is None else q.drop_generator.get_state(), q.dropped_elements)
                for q in quantizers]

    def restore(states: list[tuple]) -> None:
        for quantizer, generator_state, count in states:
            if generator_state is not None:
                quantizer.drop_generator.set_state(generator_state)
            quantizer.dropped_elements = count

    @contextlib.contextmanager
    def forward() -> Iterator[None]:
        recorded[:] = snapshot()
        yield

    @contextlib.contextmanager
    def recompute() -> Iterator[None]:
        now = snapshot()
        restore(recorded)
        try:
            yield
        finally:
            restore(now)

    return forward(), recompute()


def chunked_attention(model: torch.nn.Module, rows: int | None) -> contextlib.AbstractContextManager:
    """While gradients flow, every :class:`SitedViTAttention` of ``model`` attends ``rows`` query
    rows at a time, recomputing each chunk in the backward pass (None: whole maps); restored on exit."""
    return overridden([m for m in model.modules() if isinstance(m, SitedViTAttention)], "query_chunk", rows)


class SitedTwoWayAttention(AttentionSites, TwoWayAttention):
    """Attention of the mask decoder's TwoWayTransformer. The logits site sees ``q @ kᵀ`` before
    the division by ``sqrt(head dim)``."""

    def forward(self, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        q = self._separate_heads(self.q_proj(q), self.num_heads)
        k = self._separate_heads(self.k_proj(k), self.num_heads)
        v = self.value_site(self._separate_heads(self.v_proj(v), self.num_heads))

        _, _, _, c_per_head = q.shape
        attn = self.logits_site(self.query_site(q) @ self.key_site(k).permute(0, 1, 3, 2))
        attn = attn / math.sqrt(c_per_head)
        attn = self.probs_site(torch.softmax(attn, dim=-1), v)

        out = self._recombine_heads(self.context_site(attn @ v))
        return self.out_proj(out)


class SitedTinyViTAttention(AttentionSites, TinyViTAttention):
    """TinyViT window attention. The logits site sees ``q @ kᵀ`` before scaling and before the
    learned position bias is added."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        q, k, v = self.heads(x)
        v = self.value_site(v)

        attn = self.logits_site(self.query_site(q) @ self.key_site(k).transpose(-2, -1))
        attn = attn * self.scale + self.attention_bias()
        attn = self.probs_site(attn.softmax(dim=-1), v)

        x = self.context_site(attn @ v).transpose(1, 2).reshape(batch, tokens, self.dh)
        return self.proj(x)


class SitedMaskDecoder(MaskDecoder):
    """SAM's mask decoder with sites on the final ``hyper_in @ upscaled_embedding`` matmul
    (``matmul_a`` = hyper_in, ``matmul_b`` = the flattened upscaled embedding)."""

    SITE_ROLES = {"matmul_a": "matmul_a", "matmul_b": "matmul_b", "matmul_output": "output"}
    PRODUCTS = (Product("matmul", "matmul_a", "matmul_b", output="matmul_output"),)
    matmul_a_site: Site
    matmul_b_site: Site
    matmul_output_site: Site

    def predict_masks(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        src, pos_src, tokens = self.transformer_inputs(image_embeddings, image_pe, sparse_prompt_embeddings,
                                                       dense_prompt_embeddings)
        b, c, h, w = src.shape

        hs, src = self.transformer(src, pos_src, tokens)
        iou_token_out = hs[:, 0, :]
        mask_tokens_out = hs[:, 1 : (1 + self.num_mask_tokens), :]

        src = src.transpose(1, 2).view(b, c, h, w)
        upscaled_embedding = self.output_upscaling(src)
        hyper_in = torch.stack(
            [mlp(mask_tokens_out[:, i, :]) for i, mlp in enumerate(self.output_hypernetworks_mlps)], dim=1
        )
        b, c, h, w = upscaled_embedding.shape
        product = self.matmul_a_site(hyper_in) @ self.matmul_b_site(upscaled_embedding.view(b, c, h * w))
        masks = self.matmul_output_site(product).view(b, -1, h, w)

        iou_pred = self.iou_prediction_head(iou_token_out)
        return masks, iou_pred

    def transformer_inputs(
        self,
        image_embeddings: torch.Tensor,
        image_pe: torch.Tensor,
        sparse_prompt_embeddings: torch.Tensor,
        dense_prompt_embeddings: torch.Tensor,
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(src, pos_src, tokens)``: the TwoWayTransformer's inputs, one copy of the image per prompt."""
        output_tokens = torch.cat([self.iou_token.weight, self.mask_tokens.weight], dim=0)
        output_tokens = output_tokens.unsqueeze(0).expand(sparse_prompt_embeddings.size(0), -1, -1)
        tokens = torch.cat((output_tokens, sparse_prompt_embeddings), dim=1)

        src = torch.repeat_interleave(image_embeddings, tokens.shape[0], dim=0)
        src = src + dense_prompt_embeddings
        pos_src = torch.repeat_interleave(image_pe, tokens.shape[0], dim=0)
        return src, pos_src, tokens


#: original class -> instrumented class.
SITED_BLOCKS: dict[type, type] = {
    ViTAttention: SitedViTAttention,
    TwoWayAttention: SitedTwoWayAttention,
    TinyViTAttention: SitedTinyViTAttention,
    MaskDecoder: SitedMaskDecoder,
}
