"""Analytic FLOPs and BOPs of a (pruned) encoder from real per-example, per-layer token counts.

Per example and layer, with n_in tokens entering and n_keep surviving that layer's pruning,
hidden size d and FFN size f, in multiply-accumulates (MACs):

    Q, K, V projections      3 * d * d * n_in     (every entering token is projected)
    QK^T and AV              2 * d * n_in * n_in  (attention over the entering tokens)
    output projection        d * d * n_keep       (tokens are dropped before it)
    FFN (two matmuls)        2 * d * f * n_keep

Unpruned (n_keep = n_in = n) this is the paper's 4*d*d*n + 2*d*n*n + 2*d*f*n per layer.
FLOPs = 2 * MACs; embeddings, pooler and classifier are excluded, as in the paper
(RoBERTa-base at 128 tokens: 22.35 GFLOPs).

BOPs = sum over matmuls of MACs * weight-operand bits * activation-operand bits. The four
projections and the FFN are "linear" matmuls; QK^T and AV multiply two activations and are
counted at the precision they really run in (`attention_bits` for both operands).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Precision:
    """Operand bits of the encoder's matmuls."""

    weight_bits: int = 32  # linear layers' weights
    activation_bits: int = 32  # linear layers' inputs
    attention_bits: int = 32  # both operands of QK^T and AV

    def as_dict(self) -> dict[str, int]:
        return {
            "weight": self.weight_bits,
            "activation": self.activation_bits,
            "attention": self.attention_bits,
        }


FP32 = Precision()
FP16 = Precision(16, 16, 16)


@dataclass(frozen=True)
class EncoderCost:
    """Mean cost per example over a dataset."""

    linear_macs: float
    attention_macs: float

    @property
    def gflops(self) -> float:
        return 2 * (self.linear_macs + self.attention_macs) / 1e9

    def bops(self, precision: Precision) -> float:
        linear = self.linear_macs * precision.weight_bits * precision.activation_bits
        return linear + self.attention_macs * precision.attention_bits**2


def encoder_cost(
    hidden_size: int, ffn_size: int, tokens_in: torch.Tensor, tokens_kept: torch.Tensor
) -> EncoderCost:
    """Mean MACs per example from (E, L) counts of tokens entering / surviving each layer."""
    d, f = hidden_size, ffn_size
    n_in, n_keep = tokens_in.double(), tokens_kept.double()  # (E, L)
    linear = 3 * d * d * n_in + d * d * n_keep + 2 * d * f * n_keep
    attention = 2 * d * n_in * n_in
    return EncoderCost(float(linear.sum(1).mean()), float(attention.sum(1).mean()))


def cost_from_config(config, tokens_in: torch.Tensor, tokens_kept: torch.Tensor) -> EncoderCost:
    """`encoder_cost` with d and f read from a Hugging Face config."""
    return encoder_cost(config.hidden_size, config.intermediate_size, tokens_in, tokens_kept)
