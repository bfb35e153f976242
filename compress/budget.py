"""A FLOPs budget for the soft stage: say the reduction, let the thresholds find it.

Instead of LTP's lambda (a weight on kept tokens whose effect depends on the task, the lengths
and the learning rates), the soft stage is trained against a constraint on its expected FLOPs,
with a Lagrangian as in CoFi (Xia et al., 2022) and ToP (Li et al., 2023):

    penalty = lambda_1 * (f - t) + lambda_2 * (f - t)^2

f is the batch's expected encoder MACs relative to the unpruned batch (from the soft masks'
sums, `compress.flops.macs_fraction`), t the target fraction 1 / reduction. The multipliers are
learned by gradient *ascent* (their gradients are negated), so lambda_1 grows while the model
is over budget and shrinks, below zero if need be, when it prunes more than asked: the constraint
is an equality, met from both sides. The target falls linearly from 1 to t over the first
`warmup` fraction of the steps, so pruning grows as the weights adapt instead of at once.
"""

from __future__ import annotations

import torch
from torch import nn

from compress.flops import macs_fraction


def max_reduction(config, lengths: torch.Tensor, prune_from_layer: int) -> float:
    """The GFLOPs reduction when every layer that can prune keeps [CLS] alone: the most a budget
    can ask of examples of these `lengths`. Layers before `prune_from_layer` and the first pruning
    layer's attention always see every token."""
    layers = config.num_hidden_layers
    n = lengths.double()[:, None].expand(-1, layers)
    pruned = torch.arange(layers) >= prune_from_layer  # layers that keep [CLS] alone
    kept = torch.where(pruned, torch.ones_like(n), n)
    entering = torch.cat([n[:, :1], kept[:, :-1]], dim=1)
    return 1.0 / float(macs_fraction(config, entering, kept))


class FlopsBudget(nn.Module):
    def __init__(self, target_reduction: float, total_steps: int, warmup: float, config):
        super().__init__()
        self.target = 1.0 / target_reduction
        self.warmup_steps = max(1, round(warmup * total_steps))
        self.config = config  # the Hugging Face config: hidden and FFN sizes
        self.multipliers = nn.Parameter(torch.zeros(2))
        self.multipliers.register_hook(torch.neg)  # ascent: the optimiser's descent step raises the penalty
        self.steps = 0
        self.trace: list[dict] = []  # per step: step, fraction, target, lambda_1

    def target_now(self) -> float:
        progress = min(1.0, self.steps / self.warmup_steps)
        return 1.0 - progress * (1.0 - self.target)

    def penalty(self, tokens_in: torch.Tensor, tokens_kept: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The Lagrangian term of one training step, from its (B, L) expected token counts."""
        fraction = macs_fraction(self.config, tokens_in.float(), tokens_kept.float())
        target = self.target_now()
        gap = fraction - target
        lambda_1, lambda_2 = self.multipliers
        self.steps += 1
        row = {
            "step": self.steps,
            "fraction": float(fraction.detach()),
            "target": target,
            "lambda_1": float(lambda_1.detach()),
        }
        self.trace.append(row)
        return lambda_1 * gap + lambda_2 * gap**2, {"flops": row["fraction"], "target": target}
