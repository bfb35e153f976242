"""Fast inference for a pruned model: the kept tokens packed, the dense parts optionally compiled.

`PrunableModel(mode="drop")` re-pads every batch to its longest kept row, so the linear layers
also multiply the padding; after pruning, kept counts differ a lot between the examples of a
batch (SST-2, MiniLM: 20% padding against 3% before pruning). Here every linear layer, the
LayerNorms and the GELU run on the live tokens packed into one (T, d) tensor, Q, K and V come
from one fused GEMM, and attention (QK^T, softmax, AV: a few percent of the FLOPs) runs
- on CPU, on a padded (B, K, H, dh) copy (one scatter, skipped when nothing is padded);
- on CUDA, packed (`compress.bench.varlen_attention`: one Triton kernel for the output and the
  importance scores, the probabilities never written out).
Thresholds, importance scores and keep decisions are `PrunableModel`'s own, so the logits and
the token counts are those of mode="drop" (up to float rounding).

`PackedPruner(model, compiled=True)` compiles the two dense steps of a layer (projections +
attention + importance; output projection + FFN) with `torch.compile(dynamic=True)`: one graph
per step serves every layer and length (batch 1 and a single kept token get graphs of their
own). The data-dependent steps (which rows are kept, how long the longest row is) run in eager
mode between them: a few host syncs per layer, which cost nothing on CPU; with varlen attention
one (how many tokens stay), as nothing else there needs the longest row. int8 linear layers from
torchao are fast only compiled (DESIGN §4.3).

At batch 1 the speed-up stays well below the FLOPs reduction on CPU. MiniLM (SST-2, 2 threads,
profiled): its linear layers take 1.5x less time pruned (a GEMM of 4-12 rows is less efficient
than one of 25), and the ~30 small ops per layer around them (attention, importance, keep
decisions, gathers: 5-10 us each) cost the same at any token count. RoBERTa-base: its 500 MB
of fp32 weights do not fit this CPU's cache, and a GEMM of a few rows is bound by reading them.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.bench import varlen_attention
from compress.int8_attention import attention_context, attention_scores
from compress.ltp import PrunableModel, PrunedOutput, finish_layer, token_importance


def fuse_qkv(attn: nn.Module) -> nn.Linear | None:
    """One linear layer computing [Q * scaling, K, V] from the query, key and value layers.

    One GEMM instead of three, and the attention scaling folded into the query rows. Float weights
    are concatenated; torchao weights quantised per output row (`block_size[0] == 1`) are
    concatenated part by part (row scales included, so the fused layer computes exactly what the
    three did). Returns None for anything else: the caller keeps the three layers.
    """
    parts = (attn.query, attn.key, attn.value)
    if any(p.bias is None for p in parts):
        return None
    scaling = attn.scaling
    weights = [p.weight.detach() for p in parts]
    if all(type(w) is torch.Tensor for w in weights):
        weight = torch.cat([weights[0] * scaling, *weights[1:]])
    else:
        weight = _concat_quantized_rows(weights, scaling)
        if weight is None:
            return None
    bias = torch.cat([parts[0].bias.detach() * scaling, *(p.bias.detach() for p in parts[1:])])
    fused = nn.Linear(weight.shape[1], weight.shape[0], device=bias.device, dtype=bias.dtype)
    fused.weight = nn.Parameter(weight, requires_grad=False)
    fused.bias = nn.Parameter(bias, requires_grad=False)
    return fused


def _concat_quantized_rows(weights: list[torch.Tensor], query_scaling: float) -> torch.Tensor | None:
    """Row-wise concatenation of tensor-subclass weights with per-row quantisation (torchao Int8Tensor)."""
    flat = [w.__tensor_flatten__() if hasattr(w, "__tensor_flatten__") else None for w in weights]
    if any(f is None for f in flat) or len({type(w) for w in weights}) > 1:
        return None
    names, attrs = flat[0]
    if list(attrs.get("block_size", [None]))[0] != 1 or "scale" not in names:
        return None
    inner = {}
    for name in names:
        tensors = [getattr(w, name) for w in weights]
        if any(t is None for t in tensors):
            inner[name] = None
            continue
        if name == "scale":
            tensors[0] = tensors[0] * query_scaling
        inner[name] = torch.cat(tensors)
    rows = sum(w.shape[0] for w in weights)
    size = torch.Size([rows, weights[0].shape[1]])
    return type(weights[0]).__tensor_unflatten__(inner, attrs, size, (size[1], 1))


def _attend(
    qkv: nn.Module, heads: int, h: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, max_length: int,
    int8: bool,
):  # fmt: skip
    """Projections on the packed tokens, attention on a padded copy, importance of each token.

    qkv: `fuse_qkv` of the layer's attention (Q pre-scaled). h (T, d) packed live tokens; rows (T,)
    their flat positions in the (B, K) layout whose validity mask is `valid`. Returns the context
    (B, K, H, dh) and the importance scores (B, K). Same arithmetic as `compress.ltp._self_attention`
    + `token_importance`, up to float rounding.
    """
    batch, longest = valid.shape
    projected = qkv(h)  # (T, 3d)
    padded = rows.shape[0] != batch * longest
    if padded:  # one scatter into the (B*K) layout
        projected = projected.new_zeros(batch * longest, projected.shape[1]).index_copy_(0, rows, projected)
    q, k, v = projected.view(batch, longest, 3, heads, -1).permute(2, 0, 3, 1, 4).unbind(0)  # (B, H, K, dh)
    scores = attention_scores(q, k, int8)
    if padded:
        scores = scores.masked_fill_(~valid[:, None, None, :], float("-inf"))  # padded keys
    probs = scores.softmax(dim=-1)  # (B, H, K, K)
    live = valid.to(h.dtype)  # (B, K)
    context = attention_context(probs, v, int8).transpose(1, 2)  # (B, K, H, dh), a view
    return context, token_importance(probs, live, max_length)


def _attend_varlen(
    qkv: nn.Module, heads: int, h: torch.Tensor, rows: torch.Tensor, valid: torch.Tensor, max_length: int,
    int8: bool,
):  # fmt: skip
    """`_attend` with attention on the packed tokens: context (T, H, dh), importance scores (B, K)."""
    batch, longest = valid.shape
    q, k, v = qkv(h).view(h.shape[0], 3, heads, -1).unbind(1)  # (T, H, dh) each
    offsets = torch.nn.functional.pad(valid.sum(dim=1).cumsum(0), (1, 0)).to(torch.int32)  # (B + 1,)
    context, importance = varlen_attention.attention_with_importance(q, k, v, offsets, longest, max_length)
    score = importance.new_zeros(batch * longest).index_copy_(0, rows, importance).view(batch, longest)
    return context, score


def _compile(fn):
    """torch.compile with dynamic shapes. Batch 1 and a single kept token are specialised, and float and
    int8 layers are separate graphs, all on one code object shared by every pruner in the process:
    allow more graphs than dynamo's default of 8 before it would fall back to eager."""
    return torch._dynamo.config.patch(recompile_limit=64)(torch.compile(fn, dynamic=True))


class _SeparateProjections(nn.Module):
    """Fallback of `fuse_qkv`: the three projections, concatenated, Q scaled."""

    def __init__(self, attn: nn.Module):
        super().__init__()
        self.attn = attn

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        attn = self.attn
        return torch.cat([attn.query(h) * attn.scaling, attn.key(h), attn.value(h)], dim=-1)


class PackedPruner:
    """Runs a `PrunableModel`'s drop-mode forward on packed tokens (inference only).

    varlen: attention on the packed tokens (`_attend_varlen`) instead of a padded copy; default:
    on CUDA when Triton is installed and attention is float.
    """

    def __init__(self, model: PrunableModel, compiled: bool = False, varlen: bool | None = None):
        if model.spec is None:
            raise ValueError("PackedPruner needs a pruned model (one with a pruning spec)")
        if varlen is None:
            on_cuda = model.threshold_offsets.is_cuda
            varlen = on_cuda and varlen_attention.available() and not model.int8_attention
        if varlen and model.int8_attention:
            raise ValueError("the varlen attention kernel is float only; this model has int8 attention")
        self.model = model.eval()
        self.varlen = varlen
        attentions = [layer.attention.self for layer in model.hf_model.base_model.encoder.layer]
        self._qkv = [fuse_qkv(attn) or _SeparateProjections(attn) for attn in attentions]
        self._heads = attentions[0].num_attention_heads
        attend = _attend_varlen if varlen else _attend
        self._attend = _compile(attend) if compiled else attend
        self._finish = _compile(finish_layer) if compiled else finish_layer

    def _layout(self, counts: torch.Tensor, longest: int, total: int) -> tuple[torch.Tensor, torch.Tensor]:
        """The (B, K) validity mask of the packed tokens and their flat positions in it (T,).

        On CPU K shrinks to the longest row (one more host sync: free there), so attention pads
        less. With varlen attention K only sizes the importance scores' layout: it stays the
        batch's first length, and the positions come from the counts without a sync.
        """
        if not self.varlen:
            valid = torch.arange(int(counts.max()), device=counts.device)[None, :] < counts[:, None]
            return valid, valid.view(-1).nonzero().squeeze(1)
        valid = torch.arange(longest, device=counts.device)[None, :] < counts[:, None]
        batch = torch.arange(counts.shape[0], device=counts.device)
        sequence = torch.repeat_interleave(batch, counts, output_size=total)  # (T,) sequence of each token
        starts = torch.cumsum(counts, dim=0) - counts  # (B,) packed row of each sequence's first token
        offset = torch.arange(total, device=counts.device) - starts[sequence]  # (T,) position in its sequence
        return valid, sequence * longest + offset

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
            context, score = self._attend(
                self._qkv[index], self._heads, h, rows, valid, model.spec.max_length, model.int8_attention
            )
            keep = model.hard_keep(score, valid, index, theta[index], lengths)  # (B, K) bool
            survivors = keep.view(-1)[rows].nonzero().squeeze(1)  # (T',) packed rows that stay: the sync
            context = context.index_select(0, survivors) if self.varlen else context[keep]  # (T', H, dh)
            h = self._finish(layer, context.flatten(1), h.index_select(0, survivors))  # (T', d)
            counts = keep.sum(dim=1)  # (B,)
            valid, rows = self._layout(counts, valid.shape[1], h.shape[0])
            tokens_kept.append(counts)
        first = torch.cumsum(counts, dim=0) - counts  # (B,) packed row of each [CLS]
        cls_hidden = h.index_select(0, first)  # (B, d)
        return PrunedOutput(
            logits=model.classify(cls_hidden[:, None]),
            tokens_in=torch.stack(tokens_in, dim=1),
            tokens_kept=torch.stack(tokens_kept, dim=1),
            kept_fraction=(torch.stack(tokens_kept).sum() / lengths.sum()).float(),
            cls_hidden=cls_hidden,
        )
