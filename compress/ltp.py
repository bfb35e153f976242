"""Learned Token Pruning (Kim, Shen et al., KDD 2022) on Hugging Face BERT / RoBERTa encoders.

`PrunableModel` wraps an unmodified `*ForSequenceClassification` model and runs its encoder
layers with token pruning. The weights stay the Hugging Face weights, so the model still saves
and loads as one; the pruning state (thresholds or keep ratios) travels beside it as
`pruning.json`.

Four forward modes:
- "off":  the Hugging Face forward itself (any attention implementation), nothing pruned.
- "soft": differentiable mask m = sigmoid((s - theta) / T) (LTP's soft stage).
- "mask": hard 0/1 mask, tokens stay in the tensors (reference behaviour, for parity checks).
- "drop": pruned tokens leave the tensors: the per-token layers (output projection, FFN) run on
          the kept tokens packed together, attention on the batch re-padded to its longest kept row.
"mask" and "drop" give the same logits; "soft" tends to "mask" as T -> 0.

In every pruned mode the last layer keeps [CLS] alone after its attention, whatever the method:
the classifier reads nothing else, so this is exact and saves that layer's output projection and
FFN on every other token (counted by `compress.flops` like any pruning).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Literal

import torch
import torch.nn.functional as F
from pydantic import BaseModel, ConfigDict, Field
from torch import nn

from compress.errors import UserError, read_json_as
from compress.int8_attention import attention_context, attention_scores

Mode = Literal["off", "soft", "mask", "drop"]
PRUNING_FILE = "pruning.json"


class PruningSpec(BaseModel):
    """What a pruned model keeps. method "ltp": learned thresholds; "topk": static keep ratios."""

    model_config = ConfigDict(extra="forbid", allow_inf_nan=False)

    method: Literal["ltp", "topk"] = "ltp"
    # N of the importance score: fixed, so thresholds mean the same at any length
    max_length: int = Field(128, ge=1)
    final_threshold: float = Field(0.01, ge=0)  # theta_final (ltp)
    temperature: float = Field(1e-3, gt=0)  # T of the soft mask (ltp)
    prune_from_layer: int = Field(1, ge=0)  # first layer with a threshold (ltp); LTP's theta_0 is 0
    # soft mode (ltp): masks multiply through the layers and weight later keys, or each layer's
    # mask stands alone and its L1 term averages over padding too (the LTP authors' code)
    formulation: Literal["cumulative", "independent"] = "cumulative"
    # a FLOPs budget's target reduction and calibration inputs (ltp): later stages keep it
    target_gflops_reduction: float | None = Field(None, gt=1)
    budget_calibration: Literal["eval", "train"] = "eval"
    threshold_offsets: list[float] = []  # learned delta_l per layer (ltp); may be negative
    # fraction kept per layer (topk); the last layer keeps [CLS] alone whatever its entry says
    keep_ratios: list[Annotated[float, Field(gt=0, le=1)]] = []

    def save(self, directory: Path) -> None:
        (Path(directory) / PRUNING_FILE).write_text(self.model_dump_json(indent=2))

    @classmethod
    def load(cls, directory: Path, num_layers: int | None = None) -> PruningSpec | None:
        """pruning.json of `directory`, validated (against a model of `num_layers` layers when
        given), or None when there is none."""
        path = Path(directory) / PRUNING_FILE
        if not path.exists():
            return None
        spec = read_json_as(path, cls)
        if num_layers is not None:
            spec.check_layers(num_layers, str(path))
        return spec

    def check_layers(self, num_layers: int, source: str = "pruning spec") -> None:
        """Refuse per-layer lists that do not fit a model of `num_layers` layers."""
        layers = f"the model has {num_layers} layers"
        ratios, offsets = len(self.keep_ratios), len(self.threshold_offsets)
        if self.method == "topk" and ratios != num_layers:
            raise UserError(f"{source}: keep_ratios has {ratios} entries, {layers}")
        if offsets and offsets != num_layers:
            raise UserError(f"{source}: threshold_offsets has {offsets} entries, {layers}")
        if self.method == "ltp" and self.prune_from_layer >= num_layers:
            raise UserError(f"{source}: prune_from_layer is {self.prune_from_layer}, {layers}")


def linear_keep_ratios(num_layers: int, final_keep_ratio: float, start_layer: int) -> list[float]:
    """Static top-k schedule: keep everything up to `start_layer`, then fall linearly to the last layer."""
    ratios = []
    for layer in range(num_layers):
        if layer < start_layer:
            ratios.append(1.0)
        else:
            progress = (layer - start_layer + 1) / (num_layers - start_layer)
            ratios.append(1.0 - progress * (1.0 - final_keep_ratio))
    return ratios


def geometric_keep_ratios(num_layers: int, share: float, start_layer: int) -> list[float]:
    """Top-k schedule for a FLOPs budget: from `start_layer` on, each layer keeps `share` of the
    tokens the layer before it kept (share^k of the input at the k-th pruning layer)."""
    return [share ** max(0, layer - start_layer + 1) for layer in range(num_layers)]


@dataclass
class LayerImportance:
    """One layer's token importance scores, for ranking distillation (`forward(importance=True)`)."""

    score: torch.Tensor  # (B, k) s of the tokens in the layer's tensors, fp32
    positions: torch.Tensor  # (B, k) long: each token's position in the input
    live: torch.Tensor  # (B, k) bool: the tokens the layer ranked (not padding, not pruned before)


@dataclass
class PrunedOutput:
    logits: torch.Tensor  # (B, C)
    tokens_in: torch.Tensor  # (B, L) tokens entering each layer (soft mode: expected, differentiable)
    tokens_kept: torch.Tensor  # (B, L) tokens surviving each layer's pruning (soft mode: expected)
    kept_fraction: torch.Tensor  # () sum over layers of the mean (soft) mask: LTP's L1 term
    cls_hidden: torch.Tensor  # (B, d) final hidden state of [CLS], for hidden-state distillation
    # with importance=True: each pruning layer's scores (an unpruned model: its last layer's)
    importance: list[LayerImportance] = field(default_factory=list)


# ----------------------------------------------------------------------------------------------
# building blocks


def token_importance(probs: torch.Tensor, query_weight: torch.Tensor | None, max_length: int) -> torch.Tensor:
    """s[b, j] = 1 / (H * N) * sum_h sum_i w[b, i] * A[b, h, i, j]  -> (B, n), fp32.

    w weights the queries: 1 for live tokens, 0 for padding and pruned ones (soft values in the
    soft stage); None: every query is live. N is the fixed maximum length, not the batch's:
    dividing by the current length would make the same sentence score differently depending on
    how the batch was padded. fp32 because the last thresholds are ~0.01 and bf16 rounding would
    flip decisions.
    """
    num_heads = probs.shape[1]
    if query_weight is None:
        return probs.float().sum(dim=(1, 2)) / (num_heads * max_length)
    over_heads = probs.float().sum(dim=1)  # (B, n, n): heads first, so the weighting touches H x less
    return (over_heads * query_weight.float()[:, :, None]).sum(dim=1) / (num_heads * max_length)


def _self_attention(
    layer: nn.Module, h: torch.Tensor, key_bias: torch.Tensor, training: bool, int8: bool = False
):
    """The Hugging Face layer's self-attention, unfused so its probabilities are available.

    h (B, n, d), key_bias (B, n) additive, 0 for live keys (None: every key is live). Returns
    context (B, n, d) and attention probabilities (B, H, n, n) before dropout. `int8`: QK^T and AV
    in int8 (`compress.int8_attention`).
    """
    attn = layer.attention.self
    heads, head_dim = attn.num_attention_heads, attn.attention_head_size

    def split(x: torch.Tensor) -> torch.Tensor:
        return x.unflatten(-1, (heads, head_dim)).transpose(1, 2)  # (B, H, n, dh)

    q, k, v = split(attn.query(h)), split(attn.key(h)), split(attn.value(h))
    scores = attention_scores(q, k, int8) * attn.scaling
    if key_bias is not None:
        scores = scores + key_bias[:, None, None, :].to(q.dtype)
    probs = scores.softmax(dim=-1)  # (B, H, n, n)
    context = attention_context(F.dropout(probs, attn.dropout.p, training), v, int8)  # (B, H, n, dh)
    return context.transpose(1, 2).flatten(2), probs


def finish_layer(layer: nn.Module, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
    """Output projection + residual + LayerNorm, then the FFN: per token, so it runs on kept tokens only."""
    attention_output = layer.attention.output(context, residual)  # (B, n, d)
    return layer.output(layer.intermediate(attention_output), attention_output)


def _key_bias(weight: torch.Tensor) -> torch.Tensor:
    """Additive attention bias from token weights in [0, 1]: log(w), so 0 -> -inf and 1 -> 0.

    With hard 0/1 weights this is ordinary key masking; with soft weights it lets a softly
    pruned token fade out of the next layers' attention instead of staying fully visible.
    """
    log_weight = torch.log(weight.clamp_min(1e-30))
    return torch.where(weight > 0, log_weight, torch.finfo(log_weight.dtype).min)


def _cls_only(weight: torch.Tensor) -> torch.Tensor:
    """(B, n) weights, bool or float, that keep [CLS] (position 0) alone."""
    return F.pad(torch.zeros_like(weight[:, 1:]), (1, 0), value=1)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """(B, n) long: each token's position in the input."""
    return torch.arange(mask.shape[1], device=mask.device).expand(mask.shape)


def _hard_key_bias(valid: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """Additive attention bias of hard validity (B, n) bool: 0 for live keys, the dtype's minimum else."""
    return torch.where(valid, 0.0, torch.finfo(dtype).min).to(dtype)


def _finish_kept(layer: nn.Module, keep: torch.Tensor, context: torch.Tensor, residual: torch.Tensor):
    """`finish_layer` on the kept tokens only, packed into one (T, d) tensor, so no work is spent
    on padding; the result re-padded to the longest kept row.

    keep (B, n) bool, context and residual (B, n, d) -> hidden states (B, K, d), zero where padded,
    and their validity mask (B, K). Each row's tokens keep their order, so [CLS] stays at position 0.
    Static ops (NonZero, Gather, ScatterND) and a checked data-dependent K, so `torch.export` and
    the ONNX exporter take it as it is. One row needs no re-padding: its kept tokens, in order, are
    the layout (a graph exported for batch 1 has none of the re-padding's nodes).
    """
    batch, n = keep.shape
    if batch == 1:
        source = keep[0].nonzero().squeeze(1)
        torch._check(source.shape[0] >= 1)  # [CLS]; bounds the data-dependent length for torch.export
        torch._check(source.shape[0] <= n)
        hidden = finish_layer(layer, context.index_select(1, source), residual.index_select(1, source))
        return hidden, keep.new_ones(hidden.shape[:2])
    counts = keep.sum(dim=1)  # (B,)
    longest = counts.max().item()
    torch._check(longest >= 1)
    torch._check(longest <= n)
    valid = torch.arange(longest, device=keep.device)[None, :] < counts[:, None]  # (B, K)
    source = keep.flatten().nonzero().squeeze(1)  # (T,) flat positions of the kept tokens, in order
    target = valid.flatten().nonzero().squeeze(1)  # (T,) their places in the re-padded layout
    torch._check(target.shape[0] == source.shape[0])
    packed = finish_layer(layer, *(t.flatten(0, 1).index_select(0, source) for t in (context, residual)))
    padded = packed.new_zeros(batch * longest, packed.shape[-1]).index_copy(0, target, packed)
    return padded.unflatten(0, (batch, longest)), valid


def _repack(values: torch.Tensor, keep: torch.Tensor, packed_valid: torch.Tensor) -> torch.Tensor:
    """(B, n) values of the `keep` tokens in the layout `_finish_kept` returned the validity
    (B, K) of, 0 where padded."""
    packed = values.new_zeros(packed_valid.shape)
    packed[packed_valid] = values[keep]  # both row-major: each row's kept tokens in order
    return packed


# ----------------------------------------------------------------------------------------------
# the model


class PrunableModel(nn.Module):
    """A Hugging Face BERT/RoBERTa sequence classifier whose encoder drops unimportant tokens."""

    def __init__(self, hf_model: nn.Module, spec: PruningSpec | None = None):
        super().__init__()
        if getattr(hf_model.config, "model_type", None) not in ("bert", "roberta"):
            raise UserError(
                f"model type '{getattr(hf_model.config, 'model_type', '?')}' is not supported "
                "for token pruning (supported: bert, roberta)"
            )
        self.hf_model = hf_model
        self.spec = spec
        self.quantization: str | None = None  # torchao scheme of the encoder's linear layers, if any
        self.int8_attention = False  # QK^T and AV in int8 (pruned forward only)
        num_layers = hf_model.config.num_hidden_layers
        if spec is not None:
            spec.check_layers(num_layers)
        offsets = spec.threshold_offsets if spec and spec.threshold_offsets else [0.0] * num_layers
        # delta_l; learned by the soft stage alone (it sets requires_grad), frozen everywhere else
        self.threshold_offsets = nn.Parameter(torch.tensor(offsets, dtype=torch.float32), requires_grad=False)

    @property
    def config(self):
        return self.hf_model.config

    @property
    def num_layers(self) -> int:
        return self.hf_model.config.num_hidden_layers

    @property
    def device(self) -> torch.device:
        return next(self.hf_model.parameters()).device  # CUDA for int4 weight-only models

    def thresholds(self) -> torch.Tensor:
        """theta_l = theta_final * l / L + delta_l; 0 (nothing pruned) below `prune_from_layer`."""
        layers = torch.arange(self.num_layers, dtype=torch.float32, device=self.threshold_offsets.device)
        theta = self.spec.final_threshold * layers / self.num_layers + self.threshold_offsets
        return theta * (layers >= self.spec.prune_from_layer)

    def export_spec(self) -> PruningSpec | None:
        """The spec with the learned offsets written back (to save beside the weights)."""
        if self.spec is None:
            return None
        self.spec.threshold_offsets = [float(x) for x in self.threshold_offsets.detach().cpu()]
        return self.spec

    def forward(
        self, input_ids, attention_mask, token_type_ids=None, mode: Mode = "drop", importance: bool = False
    ) -> PrunedOutput:
        """`importance`: also return the token importance scores (`PrunedOutput.importance`)."""
        if self.spec is None or mode == "off":
            return self._forward_unpruned(input_ids, attention_mask, token_type_ids, importance)
        embeddings = self.hf_model.base_model.embeddings
        h = embeddings(input_ids=input_ids, token_type_ids=token_type_ids)  # (B, n, d)
        if mode == "soft":
            return self._forward_soft(h, attention_mask, importance)
        valid = None if attention_mask is None else attention_mask.bool()  # None: no padding
        return self._forward_hard(h, valid, mode == "drop", importance)

    def _forward_soft(self, h: torch.Tensor, attention_mask: torch.Tensor, importance: bool) -> PrunedOutput:
        """Every token stays in the tensors, weighted by its soft mask (LTP's soft stage).

        "cumulative": a token's weight is the product of its masks so far; it weights the token's
        keys and queries in the next layers. "independent": each layer's mask stands alone (keys
        and queries see padding only) and the L1 term averages over every position, padding too.
        Token counts are expected survivors (products of the masks): differentiable, for a budget."""
        padding = attention_mask.to(h.dtype)  # (B, n) 1 live, 0 padding
        independent = self.spec.formulation == "independent"
        live = survive = padding  # the layer's token weights; expected survival so far
        denominator = padding.numel() if independent else attention_mask.sum()
        theta = self.thresholds().to(h.device)
        tokens_in, tokens_kept, kept_fraction = [], [], h.new_zeros((), dtype=torch.float32)
        scores = []
        for index, layer in enumerate(self.hf_model.base_model.encoder.layer):
            tokens_in.append(survive.sum(dim=1))
            weight = padding if independent else live
            context, probs = _self_attention(layer, h, _key_bias(weight), self.training, self.int8_attention)
            if self._ranks(index):  # as in the hard modes: a layer without a threshold keeps every token
                score = token_importance(probs, weight, self.spec.max_length)  # (B, n)
                if importance:
                    scores.append(LayerImportance(score, _positions(attention_mask), attention_mask.bool()))
                mask = self._soft_mask(score, theta[index])
                live, survive = mask * weight, mask * survive
            elif self._is_last(index):
                live, survive = _cls_only(weight), _cls_only(survive)
            h = finish_layer(layer, context, h) * live[..., None]
            kept_fraction = kept_fraction + live.sum() / denominator
            tokens_kept.append(survive.sum(dim=1))
        return PrunedOutput(
            logits=self.classify(h),
            tokens_in=torch.stack(tokens_in, dim=1),
            tokens_kept=torch.stack(tokens_kept, dim=1),
            kept_fraction=kept_fraction,
            cls_hidden=h[:, 0],
            importance=scores,
        )

    def _forward_hard(
        self, h: torch.Tensor, valid: torch.Tensor | None, drop: bool, importance: bool
    ) -> PrunedOutput:
        """0/1 keep decisions; `drop`: pruned tokens leave the tensors, else their keys are masked.
        A layer that cannot prune (LTP's layer 0, a top-k ratio of 1) skips the importance scores.
        `valid` None: no padding. While every token in the tensors is live (no padding; after a
        drop at batch 1) no key is masked and no query weighted: a batch-1 graph has none of it."""
        dense = valid is None
        if dense:
            valid = torch.ones(h.shape[:2], dtype=torch.bool, device=h.device)
        lengths = valid.sum(dim=1)  # (B,)
        theta = self.thresholds().to(h.device)
        positions = _positions(valid) if importance else None
        tokens_kept, scores = [], []
        for index, layer in enumerate(self.hf_model.base_model.encoder.layer):
            key_bias = None if dense else _hard_key_bias(valid, h.dtype)
            context, probs = _self_attention(layer, h, key_bias, self.training, self.int8_attention)
            keep = None  # (B, n) bool: the tokens that survive this layer, where it prunes
            if self._ranks(index):
                weight = None if dense else valid.to(h.dtype)
                score = token_importance(probs, weight, self.spec.max_length)  # (B, n)
                if importance:
                    scores.append(LayerImportance(score, positions, valid))
                keep = self.hard_keep(score, None if dense else valid, index, theta[index], lengths)
            elif self._is_last(index):
                keep = _cls_only(valid)
            if keep is None:
                h = finish_layer(layer, context, h)
            elif not drop:
                h, valid = finish_layer(layer, context, h), keep
            elif self._is_last(index):  # [CLS] alone: position 0 of every row
                h, valid = finish_layer(layer, context[:, :1], h[:, :1]), keep[:, :1]
            else:
                h, valid = _finish_kept(layer, keep, context, h)
                dense = h.shape[0] == 1
                if importance:
                    positions = _repack(positions, keep, valid)
            tokens_kept.append((valid if keep is None else keep).sum(dim=1))  # (B,)
        kept = torch.stack(tokens_kept, dim=1)  # (B, L)
        return PrunedOutput(
            logits=self.classify(h),
            tokens_in=torch.cat([lengths[:, None], kept[:, :-1]], dim=1),
            tokens_kept=kept,
            kept_fraction=(kept.sum() / lengths.sum()).float(),
            cls_hidden=h[:, 0],
            importance=scores,
        )

    def _is_last(self, index: int) -> bool:
        return index == self.num_layers - 1

    def _ranks(self, index: int) -> bool:
        """Whether layer `index` chooses its tokens by their scores: LTP's layers from
        `prune_from_layer` on, top-k's layers with a ratio below 1; never the last layer, which
        keeps [CLS] alone."""
        if self._is_last(index):
            return False
        if self.spec.method == "ltp":
            return index >= self.spec.prune_from_layer
        return self.spec.keep_ratios[index] < 1

    def _soft_mask(self, score: torch.Tensor, theta: torch.Tensor) -> torch.Tensor:
        mask = torch.sigmoid((score - theta) / self.spec.temperature)
        return torch.cat([torch.ones_like(mask[:, :1]), mask[:, 1:]], dim=1)  # [CLS] always kept

    def hard_keep(self, score, live, index, theta, lengths) -> torch.Tensor:
        """Bool (B, n): which live tokens survive this layer (`live` None: every token is live).
        [CLS] (position 0) always does: the classifier reads it, and it stays at position 0
        because dropping keeps token order. The last layer keeps it alone (`score` unused there)."""
        if self._is_last(index):
            return _cls_only(live)
        if self.spec.method == "ltp":
            keep = score >= theta
        else:
            budget = torch.ceil(self.spec.keep_ratios[index] * lengths).clamp_min(1)  # (B,)
            ranked = score.clone() if live is None else score.masked_fill(~live, -1.0)
            ranked[:, 0] = math.inf
            rank = ranked.argsort(dim=1, descending=True).argsort(dim=1)  # (B, n) rank of each token
            keep = rank < budget[:, None]
        keep = keep if live is None else live & keep
        return F.pad(keep[:, 1:], (1, 0), value=True)

    def classify(self, h: torch.Tensor) -> torch.Tensor:
        """The Hugging Face head on the final hidden states; both heads read position 0 only."""
        model = self.hf_model
        if model.config.model_type == "roberta":
            return model.classifier(h)
        pooled = model.base_model.pooler(h)
        return model.classifier(model.dropout(pooled))

    def _forward_unpruned(self, input_ids, attention_mask, token_type_ids, importance: bool) -> PrunedOutput:
        kwargs = {"token_type_ids": token_type_ids} if token_type_ids is not None else {}
        out = self.hf_model(
            input_ids=input_ids, attention_mask=attention_mask, output_hidden_states=True, **kwargs
        )
        counts = attention_mask.sum(dim=1, keepdim=True).expand(-1, self.num_layers)
        scores = []
        if importance:
            scores.append(self._last_layer_importance(out.hidden_states[-2], attention_mask.bool()))
        return PrunedOutput(
            out.logits, counts, counts, out.logits.new_zeros(()), out.hidden_states[-1][:, 0], scores
        )

    def _last_layer_importance(self, h: torch.Tensor, valid: torch.Tensor) -> LayerImportance:
        """The last layer's scores over every token (its attention recomputed on its input `h`): the
        ranking ToP distils into the pruned model's layers."""
        layer = self.hf_model.base_model.encoder.layer[-1]
        _, probs = _self_attention(layer, h, _hard_key_bias(valid, h.dtype), False)
        score = token_importance(probs, valid.to(h.dtype), valid.shape[1])
        return LayerImportance(score, _positions(valid), valid)
