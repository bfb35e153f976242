"""Fast inference for a pruned model: the kept tokens packed, the dense parts optionally compiled.

`PrunableModel(mode="drop")` re-pads every batch to its longest kept row, so the linear layers
also multiply the padding; after pruning, kept counts differ a lot between the examples of a
batch (SST-2, MiniLM: 20% padding against 3% before pruning). Here every linear layer, the
LayerNorms and the GELU run on the live tokens packed into one (T, d) tensor; only attention
(QK^T, softmax, AV: a few percent of the FLOPs) runs on a padded (B, K, d) copy. Thresholds,
importance scores and keep decisions are `PrunableModel`'s own, so the logits and the token
counts are those of mode="drop" (up to float rounding).

`PackedPruner(model, compiled=True)` compiles the two dense steps of a layer (projections +
attention + importance; output projection + FFN) with `torch.compile(dynamic=True)`: one graph
per step serves every layer and length (batch 1 and a single kept token get graphs of their
own). The data-dependent steps (which rows are kept, how long the longest row is) run in eager
mode between them: two host syncs per layer, which cost nothing on CPU. int8 linear layers from
torchao are fast only compiled (DESIGN §4.3).

At batch 1 the speed-up stays well below the FLOPs reduction on CPU: with ~25 tokens a linear
layer's time is set by streaming its weights, not by the token count (MiniLM, 384 x 1536 fp32:
8 tokens take about two thirds of the time of 25).
"""

from __future__ import annotations

import torch
from torch import nn

from compress.int8_attention import attention_context, attention_scores
from compress.ltp import PrunableModel, PrunedOutput, _finish_layer, _key_bias, token_importance


def _attend(
    layer: nn.Module, h: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, max_length: int, int8: bool
):
    """Projections on the packed tokens, attention on a padded copy, importance of each token.

    h (T, d) packed live tokens; rows (T,) their flat positions in the (B, K) layout whose
    validity mask is `valid`. Returns the context (B, K, d) and the importance scores (B, K).
    Same arithmetic as `compress.ltp._self_attention` + `token_importance`.
    """
    attn = layer.attention.self
    batch, longest = valid.shape
    heads, head_dim = attn.num_attention_heads, attn.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        padded = x.new_zeros(batch * longest, x.shape[-1]).index_copy_(0, rows, x)  # (B*K, d)
        return padded.view(batch, longest, heads, head_dim).transpose(1, 2)  # (B, H, K, dh)

    q, k, v = split(attn.query(h)), split(attn.key(h)), split(attn.value(h))
    live = valid.to(h.dtype)  # (B, K)
    scores = attention_scores(q, k, int8) * attn.scaling + _key_bias(live)[:, None, None, :].to(q.dtype)
    probs = scores.softmax(dim=-1)  # (B, H, K, K)
    context = attention_context(probs, v, int8)  # (B, H, K, dh)
    context = context.transpose(1, 2).reshape(batch, longest, heads * head_dim)  # (B, K, d)
    return context, token_importance(probs, live, max_length)


def _compile(fn):
    """torch.compile with dynamic shapes. Batch 1 and a single kept token are specialised, and float and
    int8 layers are separate graphs, all on one code object shared by every pruner in the process:
    allow more graphs than dynamo's default of 8 before it would fall back to eager."""
    return torch._dynamo.config.patch(recompile_limit=64)(torch.compile(fn, dynamic=True))


class PackedPruner:
    """Runs a `PrunableModel`'s drop-mode forward on packed tokens (inference only)."""

    def __init__(self, model: PrunableModel, compiled: bool = False):
        if model.spec is None:
            raise ValueError("PackedPruner needs a pruned model (one with a pruning spec)")
        self.model = model.eval()
        self._attend = _compile(_attend) if compiled else _attend
        self._finish = _compile(_finish_layer) if compiled else _finish_layer

    @torch.inference_mode()
    def __call__(self, input_ids, attention_mask, token_type_ids=None) -> PrunedOutput:
        model = self.model
        base = model.hf_model.base_model
        embedded = base.embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, n, d)
        valid = attention_mask.bool()  # (B, K) layout of the live tokens
        rows = valid.view(-1).nonzero().squeeze(1)  # (T,) flat positions of the live tokens
        h = embedded.view(-1, embedded.shape[-1]).index_select(0, rows)  # (T, d)
        lengths = valid.sum(dim=1)  # (B,)
        theta = model.thresholds().to(h.device)
        tokens_in, tokens_kept = [], []
        for index, layer in enumerate(base.encoder.layer):
            tokens_in.append(valid.sum(dim=1))
            context, score = self._attend(layer, h, rows, valid, model.spec.max_length, model.int8_attention)
            keep = model._hard_keep(score, valid, index, theta[index], lengths)  # (B, K) bool
            flat_keep = keep.view(-1)
            context = context.view(-1, context.shape[-1])[flat_keep]  # (T', d)
            h = self._finish(layer, context, h[flat_keep[rows]])  # (T', d)
            counts = keep.sum(dim=1)  # (B,)
            valid = torch.arange(int(counts.max()), device=h.device)[None, :] < counts[:, None]
            rows = valid.view(-1).nonzero().squeeze(1)
            tokens_kept.append(counts)
        first = torch.cumsum(counts, dim=0) - counts  # (B,) packed row of each [CLS]
        cls_hidden = h.index_select(0, first)  # (B, d)
        return PrunedOutput(
            logits=model._classify(cls_hidden[:, None]),
            tokens_in=torch.stack(tokens_in, dim=1),
            tokens_kept=torch.stack(tokens_kept, dim=1),
            kept_fraction=(torch.stack(tokens_kept).sum() / lengths.sum()).float(),
            cls_hidden=cls_hidden,
        )
