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


def layer_macs(hidden_size: int, ffn_size: int, n_in: torch.Tensor, n_keep: torch.Tensor):
    """(linear, attention) MACs of the layers whose token counts are given, elementwise.

    Differentiable in the counts, so soft (expected) counts give expected MACs."""
    d, f = hidden_size, ffn_size
    return 3 * d * d * n_in + (d * d + 2 * d * f) * n_keep, 2 * d * n_in * n_in


def encoder_cost(
    hidden_size: int, ffn_size: int, tokens_in: torch.Tensor, tokens_kept: torch.Tensor
) -> EncoderCost:
    """Mean MACs per example from (E, L) counts of tokens entering / surviving each layer."""
    linear, attention = layer_macs(hidden_size, ffn_size, tokens_in.double(), tokens_kept.double())
    return EncoderCost(float(linear.sum(1).mean()), float(attention.sum(1).mean()))


def macs_fraction(config, tokens_in: torch.Tensor, tokens_kept: torch.Tensor) -> torch.Tensor:
    """The encoder MACs of a batch relative to the same batch unpruned: () from (B, L) counts,
    differentiable in them (the soft stage's expected counts give its expected fraction)."""
    d, f = config.hidden_size, config.intermediate_size
    lengths = tokens_in[:, :1].expand_as(tokens_in)
    pruned = sum(layer_macs(d, f, tokens_in, tokens_kept))
    unpruned = sum(layer_macs(d, f, lengths, lengths))
    return pruned.sum() / unpruned.sum()


def cost_from_config(config, tokens_in: torch.Tensor, tokens_kept: torch.Tensor) -> EncoderCost:
    """`encoder_cost` with d and f read from a Hugging Face config."""
    return encoder_cost(config.hidden_size, config.intermediate_size, tokens_in, tokens_kept)
