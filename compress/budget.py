"""A FLOPs budget for the soft stage: say the reduction, let the thresholds find it.

Instead of LTP's lambda (a weight on kept tokens whose effect depends on the task, the lengths
and the learning rates), the soft stage is trained against a constraint on its expected FLOPs,
with an augmented Lagrangian (the method of multipliers; CoFi and ToP use a Lagrangian too):

    penalty = lambda * (f - t) + rho * (f - t)^2

f is the batch's expected encoder MACs relative to the unpruned batch (from the soft masks'
sums, `compress.flops.macs_fraction`), t the target fraction 1 / reduction. rho is fixed: its
term pulls f towards t at once, from both sides, whatever the optimiser's step size (the
thresholds' AdamW moves them at about their learning rate, so a multiplier that must first grow
large before it acts would overshoot). lambda follows dual ascent after each step,
lambda += rate * (f - t), outside the optimiser and its schedule: it removes the offset that the
task loss's pull leaves under rho alone. The target moves linearly from the first batch's
fraction (the initial thresholds already prune) to t over the first `warmup` fraction of the steps.

With `layer_targets` the constraint is per layer instead (one multiplier each): layer l's
expected survivors, as a share of the batch's tokens, against layer_targets[l] (every layer but
the last, which keeps [CLS] alone whatever the thresholds). Given top-k's
geometric schedule for the budget, this spreads the pruning over the layers as top-k does while
the thresholds still choose which tokens go; the total alone lets the cheapest solution win, and
that prunes nearly everything at one early layer.

The soft masks' expected FLOPs are not quite the hard model's (a half-kept token counts half, then
all or nothing), so after training `calibrate` shifts every threshold by one common offset, found
by bisection, until the hard model's FLOPs on given inputs are on target.

Top-k needs no training to meet a budget: its kept counts follow from the lengths alone, so
`topk_share` finds the per-layer share of a geometric schedule that meets it on given lengths.
"""

from __future__ import annotations

import torch
from torch.utils.data import DataLoader

from compress.evaluate import predict
from compress.flops import macs_fraction
from compress.ltp import geometric_keep_ratios


def max_reduction(config, lengths: torch.Tensor, prune_from_layer: int) -> float:
    """The GFLOPs reduction when every layer that can prune keeps [CLS] alone: the most a budget
    can ask of examples of these `lengths`. Layers before `prune_from_layer` and the first pruning
    layer's attention always see every token."""
    layers = config.num_hidden_layers
    n = lengths.double()[:, None].expand(-1, layers)
    pruned = torch.arange(layers) >= min(prune_from_layer, layers - 1)  # layers that keep [CLS] alone
    return 1.0 / kept_fraction(config, lengths, torch.where(pruned, torch.ones_like(n), n))


def kept_fraction(config, lengths: torch.Tensor, kept: torch.Tensor) -> float:
    """Encoder MACs relative to unpruned of examples of `lengths` (E,) whose layers keep `kept`
    (E, L) tokens: each layer takes in what the one before it kept, the first the whole input."""
    entering = torch.cat([lengths.double()[:, None], kept[:, :-1]], dim=1)
    return float(macs_fraction(config, entering, kept))


class FlopsBudget:
    def __init__(
        self,
        target_reduction: float,
        total_steps: int,
        warmup: float,
        config,
        rho: float,
        rate: float,
        layer_targets: list[float] | None = None,
    ):
        self.flops_target = 1.0 / target_reduction
        per_layer = layer_targets is not None
        self.target = torch.tensor(layer_targets if per_layer else [self.flops_target], dtype=torch.float32)
        self.per_layer = per_layer
        self.warmup_steps = round(warmup * total_steps)
        self.config = config  # the Hugging Face config: hidden and FFN sizes
        self.rho, self.rate = rho, rate
        self.multiplier = torch.zeros_like(self.target)  # lambda, one per constraint
        self.start: torch.Tensor | None = None  # the first batch's values, where the targets start
        self.steps = 0
        self.trace: list[dict] = []  # per step: step, FLOPs fraction, its target, mean lambda

    def target_now(self) -> torch.Tensor:
        start = self.start if self.start is not None else torch.ones_like(self.target)
        progress = min(1.0, self.steps / self.warmup_steps) if self.warmup_steps else 1.0
        return start - progress * (start - self.target)

    def constrained(self, tokens_in: torch.Tensor, tokens_kept: torch.Tensor) -> torch.Tensor:
        """What the constraints hold to their targets: (1,) the FLOPs fraction, or (L,) each
        layer's expected survivors over the batch's tokens."""
        if self.per_layer:
            layers = len(self.target)
            return tokens_kept[:, :layers].float().sum(dim=0) / tokens_in[:, 0].float().sum()
        return macs_fraction(self.config, tokens_in.float(), tokens_kept.float())[None]

    def penalty(self, tokens_in: torch.Tensor, tokens_kept: torch.Tensor) -> tuple[torch.Tensor, dict]:
        """The augmented Lagrangian of one training step, from its (B, L) expected token counts;
        then the multipliers' ascent step."""
        values = self.constrained(tokens_in, tokens_kept)
        if self.start is None:
            self.start = torch.maximum(self.target, values.detach().clamp_max(1.0))
        target = self.target_now()
        gap = values - target
        multiplier, observed = self.multiplier.clone(), gap.detach()
        self.multiplier += self.rate * observed
        self.steps += 1
        fraction = float(macs_fraction(self.config, tokens_in.detach().float(), tokens_kept.detach().float()))
        # the FLOPs target moves with the per-layer ones only implicitly: the trace shows the goal
        flops_target = self.flops_target if self.per_layer else float(target[0])
        row = {
            "step": self.steps,
            "fraction": fraction,
            "target": flops_target,
            "lambda": float(multiplier.mean()),
        }
        self.trace.append(row)
        penalty = (multiplier * gap).sum() + self.rho * (gap**2).sum()
        return penalty, {"flops": fraction, "target": flops_target}


def hard_fraction(model, loader: DataLoader) -> float:
    """The hard (tokens dropped) model's encoder MACs over the loader's examples, relative to unpruned."""
    _, _, tokens_in, tokens_kept = predict(model, loader, "drop")
    return float(macs_fraction(model.config, tokens_in.double(), tokens_kept.double()))


def calibrate(model, loader: DataLoader, target: float, span: float = 1.0, steps: int = 20) -> float:
    """Shift the thresholds by the common offset in [-span, span] (bisection, `steps` halvings)
    that brings `hard_fraction` on the loader to `target`; returns the offset applied."""
    offsets = model.threshold_offsets.data.clone()
    low, high = -span, span  # the fraction falls as the offset rises
    for _ in range(steps):
        middle = (low + high) / 2
        model.threshold_offsets.data = offsets + middle
        if hard_fraction(model, loader) > target:
            low = middle
        else:
            high = middle
    model.threshold_offsets.data = offsets + high  # the side that is within budget
    return high


def topk_fraction(config, lengths: torch.Tensor, ratios: list[float]) -> float:
    """Encoder MACs of top-k with these per-layer keep ratios on examples of `lengths`, relative to
    unpruned; counts as `PrunableModel.hard_keep` keeps them (ceil(ratio * length), at least 1;
    [CLS] alone in the last layer, whatever its ratio)."""
    kept = [torch.ceil(ratio * lengths).clamp_min(1) for ratio in ratios[:-1]]  # as float32, like it
    kept.append(torch.ones_like(kept[0]))
    return kept_fraction(config, lengths, torch.stack(kept, dim=1).double())


def topk_share(config, lengths: torch.Tensor, target_reduction: float, start_layer: int) -> float | None:
    """The largest share per layer (`geometric_keep_ratios`, bisection to 1e-6) whose FLOPs on
    `lengths` are within 1 / `target_reduction` of unpruned; None when even keeping [CLS] alone
    from `start_layer` on is not."""
    layers, target = config.num_hidden_layers, 1.0 / target_reduction

    def within(share: float) -> bool:
        return topk_fraction(config, lengths, geometric_keep_ratios(layers, share, start_layer)) <= target

    low, high = 1.0 / float(lengths.max()), 1.0  # at `low` every pruning layer keeps [CLS] alone
    if not within(low):
        return None
    if within(high):
        return high
    while high - low > 1e-6:  # `low` stays within the budget, `high` over it
        middle = (low + high) / 2
        low, high = (middle, high) if within(middle) else (low, middle)
    return low
