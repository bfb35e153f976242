"""The FLOPs budget of the soft stage: its expected-FLOPs fraction and its Lagrangian controller."""

from pathlib import Path

import pytest
import torch
import yaml

from compress.artifacts import read_result
from compress.budget import FlopsBudget, kept_fraction, max_reduction, topk_fraction, topk_share
from compress.errors import UserError
from compress.flops import cost_from_config, macs_fraction
from compress.ltp import PrunableModel, PruningSpec, geometric_keep_ratios
from compress.recipe import dump_recipe, parse_recipe
from tests.test_ltp import batch_with_mixed_lengths, soft_stage_run, tiny_model, tiny_stages_run


def test_macs_fraction_is_the_cost_ratio_of_hard_counts():
    config = tiny_model("bert").config
    tokens_in = torch.tensor([[12, 12, 6], [5, 5, 2]])
    tokens_kept = torch.tensor([[12, 6, 3], [5, 2, 1]])
    full = torch.tensor([[12, 12, 12], [5, 5, 5]])
    expected = (
        cost_from_config(config, tokens_in, tokens_kept).gflops / cost_from_config(config, full, full).gflops
    )
    assert float(macs_fraction(config, tokens_in, tokens_kept)) == pytest.approx(expected, rel=1e-6)
    assert float(macs_fraction(config, full, full)) == pytest.approx(1.0)


def test_the_target_moves_linearly_from_the_first_batch_to_its_value():
    budget = FlopsBudget(4.0, total_steps=100, warmup=0.5, config=tiny_model("bert").config, rho=10, rate=0.5)
    full = torch.tensor([[8, 8, 8]])
    budget.penalty(full, full)  # the first batch prunes nothing: the target starts at 1
    assert budget.trace[0]["target"] == 1.0 and budget.start == 1.0
    budget.steps = 25
    assert budget.target_now() == pytest.approx(1 - 0.5 * 0.75)
    budget.steps = 80
    assert budget.target_now() == pytest.approx(0.25)


def test_the_multiplier_ascends_on_the_gap():
    config = tiny_model("bert").config
    budget = FlopsBudget(2.0, total_steps=10, warmup=0.0, config=config, rho=2.0, rate=0.5)
    full = torch.tensor([[8, 8, 8]], dtype=torch.float32, requires_grad=True)
    penalty, _ = budget.penalty(full, full)  # fraction 1 against the target 0.5 (no warm-up)
    assert float(penalty.detach()) == pytest.approx(2.0 * 0.25)  # lambda starts at 0: rho * gap^2 alone ...
    assert budget.multiplier == pytest.approx(0.25)  # ... and rises by rate * gap
    penalty, _ = budget.penalty(full, full)
    assert float(penalty.detach()) == pytest.approx(0.25 * 0.5 + 2.0 * 0.25)


def train_thresholds_alone(first_layer: int, make_budget, steps: int = 400):
    """Thresholds and multipliers alone (weights frozen, no task loss) on one batch of mixed
    lengths: the model, the budget, the batch and the constrained values of every step."""
    hf = tiny_model("bert")
    for param in hf.parameters():
        param.requires_grad_(False)
    ids, mask = batch_with_mixed_lengths(lengths=(16, 14, 12, 16, 10, 15))
    spec = PruningSpec(final_threshold=0.0, max_length=16, temperature=5e-3, prune_from_layer=first_layer)
    model = PrunableModel(hf, spec).train()
    model.threshold_offsets.requires_grad_(True)
    budget = make_budget(hf.config)
    optimizer = torch.optim.AdamW([model.threshold_offsets], lr=2e-3, weight_decay=0.0)
    values = []
    for _ in range(steps):
        out = model(ids, mask, mode="soft")
        penalty, _ = budget.penalty(out.tokens_in, out.tokens_kept)
        optimizer.zero_grad()
        penalty.backward()
        optimizer.step()
        values.append(budget.constrained(out.tokens_in, out.tokens_kept).detach())
    return model.eval(), budget, (ids, mask), values


@pytest.mark.parametrize(("reduction", "first_layer"), [(1.5, 1), (2.5, 0)])
def test_the_controller_drives_soft_thresholds_to_the_budget(reduction, first_layer):
    """The soft masks' expected FLOPs settle on the target, and the hard mask's real FLOPs land near it."""
    model, budget, batch, _ = train_thresholds_alone(
        first_layer, lambda config: FlopsBudget(reduction, 400, 0.25, config, rho=10.0, rate=0.1)
    )
    settled = [point["fraction"] for point in budget.trace[-50:]]
    assert sum(settled) / len(settled) == pytest.approx(1 / reduction, rel=0.05)
    with torch.no_grad():
        hard = model(*batch, mode="drop")
    assert float(macs_fraction(model.config, hard.tokens_in, hard.tokens_kept)) == pytest.approx(
        1 / reduction, rel=0.1
    )


def test_a_geometric_budget_drives_each_layer_to_its_share():
    """One constraint per layer: each pruning layer's expected survivors settle on its share of the
    tokens, where the FLOPs total alone is met by one layer pruning nearly everything."""
    targets = geometric_keep_ratios(4, 0.7, 0)[:-1]  # 0.7, 0.49, 0.343; the last layer keeps [CLS]
    _, budget, _, shares = train_thresholds_alone(
        0, lambda config: FlopsBudget(2.0, 400, 0.25, config, rho=10.0, rate=0.1, layer_targets=targets)
    )
    assert torch.stack(shares[-50:]).mean(dim=0).tolist() == pytest.approx(targets, rel=0.05)
    assert budget.multiplier.shape == (3,) and budget.trace[-1]["target"] == 0.5


def test_a_budget_shape_needs_a_budget():
    raw = {"name": "r", "model": "minilm", "task": "sst2", "stages": [soft_stage(budget_shape="geometric")]}
    with pytest.raises(
        UserError, match="budget_shape geometric shapes a budget: set target_gflops_reduction"
    ):
        parse_recipe(raw, "r.yaml")


def test_the_ceiling_is_cls_alone_from_the_first_pruning_layer():
    config = tiny_model("bert").config  # 4 layers, d 32, f 64
    lengths = torch.tensor([16, 8])
    tokens_in = torch.tensor([[16, 16, 1, 1], [8, 8, 1, 1]])
    kept = torch.tensor([[16, 1, 1, 1], [8, 1, 1, 1]])
    assert max_reduction(config, lengths, 1) == pytest.approx(
        1 / float(macs_fraction(config, tokens_in, kept))
    )
    assert max_reduction(config, lengths, 0) > max_reduction(config, lengths, 1) > 1


def soft_stage(**settings) -> dict:
    return {"name": "soft", "kind": "ltp_soft", **settings}


def test_a_budget_and_a_lambda_are_refused_together():
    recipe = {
        "name": "r",
        "model": "minilm",
        "task": "sst2",
        "stages": [soft_stage(target_gflops_reduction=3, **{"lambda": 0.1})],
    }
    with pytest.raises(UserError, match="lambda or target_gflops_reduction"):
        parse_recipe(recipe, "r.yaml")
    budgeted = parse_recipe({**recipe, "stages": [soft_stage(target_gflops_reduction=3)]}, "r.yaml")
    # the resolved recipe written beside every artifact reads back as the same recipe
    again = parse_recipe(yaml.safe_load(dump_recipe(budgeted)), "recipe.yaml")
    assert again == budgeted and again.stages[0].lambda_ is None


def test_prune_from_layer_beyond_the_model_is_refused():
    with pytest.raises(UserError, match="prune_from_layer is 4, the model has 4 layers"):
        PrunableModel(tiny_model("bert"), PruningSpec(prune_from_layer=4))


def test_layer_zero_prunes_when_asked():
    hf = tiny_model("bert")
    ids, mask = batch_with_mixed_lengths()
    kept = {}
    for first in (0, 1):
        model = PrunableModel(
            hf,
            PruningSpec(
                final_threshold=0.0,
                max_length=16,
                prune_from_layer=first,
                threshold_offsets=[0.06, 0.0, 0.0, 0.0],
            ),
        ).eval()
        with torch.no_grad():
            kept[first] = model(ids, mask, mode="drop").tokens_kept[:, 0]
    assert torch.equal(kept[1], mask.sum(1))  # LTP: layer 0 keeps everything whatever its offset
    assert (kept[0] < mask.sum(1)).any()


def test_a_budgeted_soft_stage_records_its_trajectory(tmp_path, tiny_model_dir, real_glue_dir):
    summary = soft_stage_run(tiny_model_dir, real_glue_dir, tmp_path, target_gflops_reduction=1.5, epochs=2)
    assert "trace" not in summary["stages"][0]  # in the stage's result.json, not in every summary
    trace = read_result(Path(summary["stages"][0]["artifact"]))["trace"]
    assert [point["step"] for point in trace] == [1, 2]
    assert trace[0]["target"] == pytest.approx(trace[0]["fraction"])  # the start: where the batch is
    assert trace[1]["target"] == pytest.approx(1 / 1.5)
    assert all(0 < point["fraction"] <= 1 for point in trace)


@pytest.mark.parametrize("shape", ["total", "geometric"])
def test_the_hard_stage_ends_on_the_budget_the_soft_stage_was_given(
    shape, tmp_path, tiny_model_dir, real_glue_dir, caplog
):
    """Fine-tuning moves the importance scores; the hard stage shifts its thresholds back onto the
    budget that pruning.json carries before every evaluation, and reports the model it saved."""
    hard = {"name": "hard", "kind": "ltp_hard", "epochs": 2, "batch_size": 8, "lr": 1e-3, "eval_steps": 1}
    with caplog.at_level("INFO", logger="compress.stages.common"):
        summary = soft_stage_run(
            tiny_model_dir,
            real_glue_dir,
            tmp_path,
            later=(hard,),
            target_gflops_reduction=1.5,
            epochs=2,
            budget_shape=shape,
        )
    shifts = [r for r in caplog.records if r.getMessage().startswith("hard: thresholds shifted")]
    history = read_result(Path(summary["stages"][1]["artifact"]))["history"]
    assert len(shifts) == len(history) == 4  # 2 steps an epoch, 2 epochs: each evaluation on budget
    baseline = summary["final"]["baseline_gflops"]
    artifact = Path(summary["stages"][1]["artifact"])
    spec = PruningSpec.load(artifact)
    assert spec.target_gflops_reduction == 1.5 and spec.budget_calibration == "eval"
    for stage in summary["stages"]:  # at or under the budget on the dev inputs, and close to it
        assert 1.5 <= baseline / stage["gflops"] <= 1.5 * 1.1, stage["name"]


def test_a_budget_out_of_reach_is_refused_before_training(tmp_path, tiny_model_dir, real_glue_dir):
    with pytest.raises(
        UserError, match=r"target_gflops_reduction: 50x is out of reach .* set prune_from_layer: 0"
    ):
        soft_stage_run(tiny_model_dir, real_glue_dir, tmp_path, target_gflops_reduction=50)


def test_the_trajectory_becomes_step_metrics_and_a_plot(tmp_path):
    import mlflow
    from mlflow import MlflowClient

    from compress.stages.base import StageResult
    from pipelines.tracking import log_stage

    trace = [{"step": s, "fraction": 1 - s / 20, "target": 1 - s / 25, "lambda": s / 100} for s in (1, 5, 9)]
    result = StageResult(
        "soft", "ltp_soft", str(tmp_path), {"accuracy": 0.5}, "accuracy", 1.0, 1.0, {}, [], 1.0
    )
    result.trace = trace
    with mlflow.start_run() as run:
        log_stage(run.info.run_id, result)
    client = MlflowClient()
    history = client.get_metric_history(run.info.run_id, "budget_fraction")
    assert [(m.step, m.value) for m in history] == [(p["step"], p["fraction"]) for p in trace]
    assert "budget.png" in {item.path for item in client.list_artifacts(run.info.run_id)}


def test_calibration_shifts_the_thresholds_onto_the_budget():
    from torch.utils.data import DataLoader

    from compress.budget import calibrate, hard_fraction

    model = PrunableModel(tiny_model("bert"), PruningSpec(final_threshold=0.0, max_length=16)).eval()
    ids, mask = batch_with_mixed_lengths(lengths=(16, 14, 12, 16, 10, 15, 9, 13))
    labels = torch.zeros(len(ids), dtype=torch.long)  # `predict` reads them; calibration does not use them
    loader = DataLoader([{"input_ids": ids, "attention_mask": mask, "labels": labels}], batch_size=None)
    lengths = mask.sum(1)
    every_token = torch.stack([lengths] * 3 + [torch.ones_like(lengths)], dim=1)  # [CLS] alone in the last
    # theta 0 keeps every token
    assert hard_fraction(model, loader) == pytest.approx(kept_fraction(model.config, lengths, every_token))
    offset = calibrate(model, loader, target=0.7)
    reached = hard_fraction(model, loader)
    assert 0.6 < reached <= 0.7 and offset > 0
    assert model.threshold_offsets.tolist() == pytest.approx([offset] * 4)


@pytest.mark.parametrize("reduction, start", [(1.5, 0), (1.3, 1)])
def test_topk_share_meets_a_budget_from_below(reduction, start):
    config = tiny_model("bert").config  # 4 layers
    lengths = torch.tensor([12, 5, 9, 3, 30, 17])
    share = topk_share(config, lengths, reduction, start)
    ratios = geometric_keep_ratios(4, share, start)
    assert ratios[:start] == [1.0] * start and ratios[start] == pytest.approx(share)
    assert 1 / topk_fraction(config, lengths, ratios) >= reduction  # within budget
    a_bit_more = geometric_keep_ratios(4, share + 1e-3, start)
    assert 1 / topk_fraction(config, lengths, a_bit_more) < reduction  # and the largest share that is
    # the kept counts are those the model keeps: ceil(ratio * length), [CLS] at least
    model = PrunableModel(tiny_model("bert"), PruningSpec(method="topk", max_length=16, keep_ratios=ratios))
    ids, mask = batch_with_mixed_lengths()
    with torch.no_grad():
        out = model(ids, mask, mode="drop")
    expected = topk_fraction(config, mask.sum(1), ratios)
    assert float(macs_fraction(config, out.tokens_in, out.tokens_kept)) == pytest.approx(expected)


def test_a_topk_budget_out_of_reach_or_with_a_ratio_is_refused():
    config = tiny_model("bert").config
    assert topk_share(config, torch.tensor([4, 6]), 50.0, 1) is None  # layer 0 sees every token
    raw = {
        "name": "t",
        "model": "minilm",
        "task": "sst2",
        "stages": [{"name": "topk", "kind": "topk", "target_gflops_reduction": 2, "final_keep_ratio": 0.2}],
    }
    with pytest.raises(UserError, match="set final_keep_ratio or target_gflops_reduction, not both"):
        parse_recipe(raw, "t.yaml")


def test_a_topk_stage_meets_its_budget_on_the_dev_inputs(tmp_path, tiny_model_dir, real_glue_dir):
    topk = {"name": "topk", "kind": "topk", "epochs": 1, "batch_size": 16, "start_layer": 0}
    summary = tiny_stages_run(
        tiny_model_dir, real_glue_dir, tmp_path, [{**topk, "target_gflops_reduction": 1.5}]
    )
    reached = summary["final"]["baseline_gflops"] / summary["stages"][0]["gflops"]
    assert 1.5 <= reached <= 1.5 * 1.1
    with pytest.raises(
        UserError, match=r"topk.target_gflops_reduction: 50x is out of reach .* or start_layer$"
    ):
        tiny_stages_run(
            tiny_model_dir, real_glue_dir, tmp_path / "far", [{**topk, "target_gflops_reduction": 50}]
        )


def test_ltp_started_from_a_topk_model_replaces_its_schedule_with_thresholds(
    tmp_path, tiny_model_dir, real_glue_dir
):
    topk = {"name": "topk", "kind": "topk", "epochs": 1, "batch_size": 16, "start_layer": 0}
    soft = {"name": "soft", "kind": "ltp_soft", "batch_size": 16, "prune_from_layer": 0}
    budget = {"target_gflops_reduction": 1.5}
    summary = tiny_stages_run(
        tiny_model_dir,
        real_glue_dir,
        tmp_path,
        [{**topk, **budget}, {**soft, **budget, "budget_shape": "geometric"}],
    )
    spec = PruningSpec.load(Path(summary["stages"][1]["artifact"]))
    assert spec.method == "ltp" and spec.keep_ratios == [] and len(spec.threshold_offsets) == 4
    reached = summary["final"]["baseline_gflops"] / summary["stages"][1]["gflops"]
    assert 1.5 <= reached <= 1.5 * 1.1
