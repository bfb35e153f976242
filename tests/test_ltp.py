"""Parity and gradient tests of the LTP model on tiny random BERT and RoBERTa encoders."""

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    BertConfig,
    BertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from compress.flops import cost_from_config
from compress.ltp import PrunableModel, PruningSpec, linear_keep_ratios, token_importance
from compress.pipeline import collapse_warning
from compress.stages.base import StageResult

# offsets that make layers 1 and 2 both prune, by different amounts per example (layer 3, the
# last, keeps [CLS] alone)
PRUNING = dict(final_threshold=0.09, max_length=16, threshold_offsets=[0.0, 0.03, 0.0, 0.0])
TINY = dict(
    hidden_size=32,
    num_hidden_layers=4,
    num_attention_heads=4,
    intermediate_size=64,
    vocab_size=100,
    max_position_embeddings=64,
    num_labels=3,
    initializer_range=0.2,
)  # wide init: attention far from uniform, so scores differ


def tiny_model(kind: str) -> torch.nn.Module:
    torch.manual_seed(0)
    if kind == "bert":
        model = BertForSequenceClassification(BertConfig(**TINY, attn_implementation="eager"))
    else:
        model = RobertaForSequenceClassification(
            RobertaConfig(**TINY, pad_token_id=1, attn_implementation="eager")
        )
    return model.eval()


def batch_with_mixed_lengths(lengths=(12, 5, 9, 3), pad_id=0):
    torch.manual_seed(1)
    n = max(lengths)
    ids = torch.randint(5, 100, (len(lengths), n))
    mask = torch.zeros(len(lengths), n, dtype=torch.long)
    for row, length in enumerate(lengths):
        mask[row, :length] = 1
        ids[row, length:] = pad_id
    return ids, mask


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_zero_threshold_reproduces_hugging_face_logits(kind):
    hf = tiny_model(kind)
    pad = hf.config.pad_token_id
    ids, mask = batch_with_mixed_lengths(pad_id=pad)
    spec = PruningSpec(final_threshold=0.0, max_length=16)
    model = PrunableModel(hf, spec).eval()
    with torch.no_grad():
        reference = hf(input_ids=ids, attention_mask=mask).logits
        for mode in ("mask", "drop"):
            out = model(ids, mask, mode=mode)
            torch.testing.assert_close(out.logits, reference, atol=1e-5, rtol=0)
            every_token = mask.sum(1, keepdim=True).expand(-1, 3)
            assert torch.equal(out.tokens_kept, torch.cat([every_token, torch.ones_like(mask[:, :1])], 1))


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_dropping_equals_masking_with_mixed_kept_counts(kind):
    hf = tiny_model(kind)
    ids, mask = batch_with_mixed_lengths(pad_id=hf.config.pad_token_id)
    model = PrunableModel(hf, PruningSpec(**PRUNING)).eval()
    with torch.no_grad():
        masked = model(ids, mask, mode="mask")
        dropped = model(ids, mask, mode="drop")
    torch.testing.assert_close(dropped.logits, masked.logits, atol=1e-4, rtol=0)
    assert torch.equal(dropped.tokens_kept, masked.tokens_kept)
    kept = dropped.tokens_kept[:, 2]
    assert (dropped.tokens_kept[:, 1] < mask.sum(1)).any(), "layer 1 should prune"
    assert (kept < dropped.tokens_kept[:, 1]).any()
    assert len(set(kept.tolist())) > 1, "kept counts should differ between examples"
    assert (dropped.tokens_kept >= 1).all(), "[CLS] is always kept"
    assert (dropped.tokens_kept[:, -1] == 1).all(), "the last layer keeps [CLS] alone"


@pytest.mark.parametrize("method", ["ltp", "topk"])
def test_no_attention_mask_means_no_padding(method):
    """A batch-1 graph's path: no mask, so no key masking and no query weights, same decisions."""
    spec = (
        PruningSpec(**PRUNING)
        if method == "ltp"
        else PruningSpec(method="topk", keep_ratios=[1, 0.6, 0.3, 1])
    )
    model = PrunableModel(tiny_model("bert"), spec).eval()
    ids, _ = batch_with_mixed_lengths((12, 12, 12))
    for rows in (ids[:1], ids):  # one row (dense after every drop) and rows of equal length
        with torch.no_grad():
            expected = model(rows, torch.ones_like(rows), mode="drop")
            unmasked = model(rows, None, mode="drop")
        torch.testing.assert_close(unmasked.logits, expected.logits, atol=1e-5, rtol=0)
        assert torch.equal(unmasked.tokens_kept, expected.tokens_kept)
        assert (expected.tokens_kept[:, 1] < 12).all(), "layer 1 should prune"


@pytest.mark.parametrize("kind", ["bert", "roberta"])
def test_dropped_importance_maps_each_token_back_to_its_input_position(kind):
    """Ranking distillation reads each pruning layer's scores by input position: with tokens
    dropped they are the masked forward's scores at the positions still live."""
    hf = tiny_model(kind)
    ids, mask = batch_with_mixed_lengths(pad_id=hf.config.pad_token_id)
    model = PrunableModel(hf, PruningSpec(**PRUNING)).eval()
    with torch.no_grad():
        masked = model(ids, mask, mode="mask", importance=True).importance
        dropped = model(ids, mask, mode="drop", importance=True).importance
    assert len(dropped) == len(masked) == 2  # layers 1 and 2 prune
    assert (dropped[1].live.sum(dim=1) < mask.sum(dim=1)).any()  # layer 2 ranks what layer 1 kept
    for drop, full in zip(dropped, masked, strict=True):
        assert torch.equal(drop.live.sum(dim=1), full.live.sum(dim=1))
        assert full.live.gather(1, drop.positions)[drop.live].all()
        expected = full.score.gather(1, drop.positions)
        torch.testing.assert_close(drop.score[drop.live], expected[drop.live], atol=1e-6, rtol=1e-4)
    assert model(ids, mask, mode="drop").importance == []  # only when asked for


def test_an_unpruned_models_importance_is_its_last_layers_attention_received():
    hf = tiny_model("bert")
    ids, mask = batch_with_mixed_lengths()
    with torch.no_grad():
        (last,) = PrunableModel(hf).eval()(ids, mask, mode="off", importance=True).importance
        attentions = hf(input_ids=ids, attention_mask=mask, output_attentions=True).attentions[-1]
    torch.testing.assert_close(
        last.score, token_importance(attentions, mask, mask.shape[1]), atol=1e-6, rtol=1e-5
    )
    assert torch.equal(last.live, mask.bool()) and torch.equal(last.positions[1], torch.arange(mask.shape[1]))


def test_dropping_trains_like_masking():
    """The packed per-token layers pass the same gradients back as the masked forward (no dropout)."""
    grads = {}
    for mode in ("mask", "drop"):
        model = PrunableModel(tiny_model("bert"), PruningSpec(**PRUNING)).eval()
        ids, mask = batch_with_mixed_lengths()
        model(ids, mask, mode=mode).logits.square().sum().backward()
        grads[mode] = {name: p.grad for name, p in model.named_parameters() if p.grad is not None}
    assert grads["drop"].keys() == grads["mask"].keys()
    for name, grad in grads["mask"].items():
        torch.testing.assert_close(grads["drop"][name], grad, atol=1e-4, rtol=1e-4, msg=name)


def test_soft_mask_tends_to_hard_mask_at_low_temperature():
    hf = tiny_model("bert")
    ids, mask = batch_with_mixed_lengths()
    model = PrunableModel(hf, PruningSpec(**PRUNING, temperature=1e-7))
    model.eval()
    with torch.no_grad():
        soft = model(ids, mask, mode="soft").logits
        hard = model(ids, mask, mode="mask").logits
    torch.testing.assert_close(soft, hard, atol=1e-4, rtol=0)


def test_independent_soft_masks_stand_alone_and_average_over_padding_too():
    ids, mask = batch_with_mixed_lengths()
    outs = {}
    for formulation in ("cumulative", "independent"):
        spec = PruningSpec(**PRUNING, temperature=1e-2, formulation=formulation)
        model = PrunableModel(tiny_model("bert"), spec).eval()
        with torch.no_grad():
            outs[formulation] = model(ids, mask, mode="soft")
        keep_all = PruningSpec(
            final_threshold=0.0, max_length=16, threshold_offsets=[-1.0] * 4, formulation=formulation
        )
        with torch.no_grad():  # thresholds below every score: the masks are all 1 but the last's
            kept = PrunableModel(tiny_model("bert"), keep_all).eval()(ids, mask, mode="soft")
        denominator = mask.numel() if formulation == "independent" else mask.sum()
        # 3 layers keep every token, the last [CLS] alone
        expected = (3 * mask.sum() + mask.shape[0]) / denominator
        assert float(kept.kept_fraction) == pytest.approx(float(expected), rel=1e-5)
    cumulative, independent = outs["cumulative"], outs["independent"]
    assert not torch.allclose(independent.logits, cumulative.logits)  # later layers see other keys
    # expected survivors multiply the masks in both: counts fall layer after layer
    for out in (cumulative, independent):
        assert (out.tokens_kept[:, 1:] <= out.tokens_kept[:, :-1] + 1e-5).all()
        torch.testing.assert_close(out.tokens_in[:, 1:], out.tokens_kept[:, :-1])


def test_gradients_reach_thresholds_in_soft_mode_only():
    model = PrunableModel(
        tiny_model("bert"), PruningSpec(final_threshold=0.05, max_length=16, temperature=1e-2)
    )
    model.threshold_offsets.requires_grad_(True)  # as the soft stage does
    ids, mask = batch_with_mixed_lengths()
    out = model(ids, mask, mode="soft")
    (out.logits.sum() + out.kept_fraction).backward()
    grad = model.threshold_offsets.grad
    assert grad is not None and grad[1:].abs().sum() > 0
    model.zero_grad(set_to_none=True)
    out = model(ids, mask, mode="drop")
    (out.logits.sum() + out.kept_fraction).backward()
    assert model.threshold_offsets.grad is None


def test_importance_counts_only_live_queries_and_divides_by_fixed_length():
    probs = torch.tensor([[[[0.5, 0.5, 0.0], [0.2, 0.8, 0.0], [0.1, 0.1, 0.8]]]])  # (1, 1, 3, 3)
    live = torch.tensor([[1.0, 1.0, 0.0]])
    score = token_importance(probs, live, max_length=10)
    torch.testing.assert_close(score, torch.tensor([[0.07, 0.13, 0.0]]))


def test_thresholds_follow_the_linear_schedule_and_layer_zero_prunes_nothing():
    spec = PruningSpec(final_threshold=0.04, threshold_offsets=[0.5, 0.001, 0.0, 0.0])
    theta = PrunableModel(tiny_model("bert"), spec).thresholds()
    torch.testing.assert_close(theta, torch.tensor([0.0, 0.011, 0.02, 0.03]))


def test_topk_keeps_the_scheduled_number_of_tokens():
    ratios = linear_keep_ratios(4, final_keep_ratio=0.4, start_layer=1)
    assert ratios == pytest.approx([1.0, 0.8, 0.6, 0.4])
    model = PrunableModel(tiny_model("bert"), PruningSpec(method="topk", keep_ratios=ratios)).eval()
    ids, mask = batch_with_mixed_lengths()
    with torch.no_grad():
        out = model(ids, mask, mode="drop")
    lengths = mask.sum(1)
    expected = torch.stack([torch.ceil(r * lengths) for r in ratios[:-1]], dim=1).long()
    assert torch.equal(out.tokens_kept[:, :-1], expected)
    assert (out.tokens_kept[:, -1] == 1).all(), "the last layer keeps [CLS] alone, whatever its ratio"


def test_analytic_flops_match_flop_counter_on_dropped_tokens():
    hf = tiny_model("bert")
    model = PrunableModel(hf, PruningSpec(**PRUNING)).eval()
    ids, mask = batch_with_mixed_lengths(lengths=(12,))
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        out = model(ids, mask, mode="drop")
    cfg = hf.config
    head_flops = 2 * (cfg.hidden_size * cfg.hidden_size + cfg.hidden_size * cfg.num_labels)
    analytic = cost_from_config(cfg, out.tokens_in, out.tokens_kept).gflops * 1e9
    assert out.tokens_kept[0, -1] < 12
    assert counter.get_total_flops() - head_flops == pytest.approx(analytic)


def test_flops_at_zero_threshold_equal_the_unpruned_formula():
    hf = tiny_model("bert")
    ids, mask = batch_with_mixed_lengths()
    out = PrunableModel(hf, PruningSpec(final_threshold=0.0)).eval()(ids, mask, mode="drop")
    d, f, n = 32, 64, mask.sum(1).double()
    # three layers on every token, then the last's attention on every token and the rest on [CLS]
    per_example = 3 * (4 * d * d * n + 2 * d * n * n + 2 * d * f * n)
    per_example += 3 * d * d * n + 2 * d * n * n + d * d + 2 * d * f
    cost = cost_from_config(hf.config, out.tokens_in, out.tokens_kept)
    assert cost.gflops == pytest.approx(float(2 * per_example.mean()) / 1e9)


def test_flops_of_a_pruned_run_are_the_mean_over_recorded_counts():
    tokens_in = torch.tensor([[10, 6], [4, 4]])
    tokens_kept = torch.tensor([[6, 3], [4, 2]])
    d, f = 8, 16
    cost = cost_from_config(BertConfig(hidden_size=d, intermediate_size=f), tokens_in, tokens_kept)

    def macs(n_in, n_keep):
        return 3 * d * d * n_in + d * d * n_keep + 2 * d * n_in * n_in + 2 * d * f * n_keep

    expected = (macs(10, 6) + macs(6, 3) + macs(4, 4) + macs(4, 2)) / 2
    assert cost.gflops == pytest.approx(2 * expected / 1e9)


def soft_stage_run(model_dir, glue_dir, out, later: tuple[dict, ...] = (), **settings):
    """A recipe of ltp_soft with `settings` (one step an epoch), then the `later` stages, on a
    4-layer copy of the tiny model; its summary."""
    stage = {"name": "soft", "kind": "ltp_soft", "batch_size": 16, **settings}
    return tiny_stages_run(model_dir, glue_dir, out, [stage, *later])


def tiny_stages_run(model_dir, glue_dir, out, stages: list[dict]):
    """A recipe of `stages` on a 4-layer copy of the tiny model, 16 SST-2 examples; its summary."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    from compress.pipeline import run_pipeline
    from compress.recipe import parse_recipe

    torch.manual_seed(0)
    BertForSequenceClassification(BertConfig.from_pretrained(model_dir, num_hidden_layers=4)).save_pretrained(
        out / "model"
    )
    AutoTokenizer.from_pretrained(model_dir).save_pretrained(out / "model")
    recipe = {"name": "tiny_soft", "model": str(out / "model"), "task": "sst2", "stages": stages}
    recipe["data"] = {"dir": str(glue_dir), "max_train_samples": 16, "max_eval_samples": 16}
    return run_pipeline(parse_recipe(recipe, "tiny_soft"), out / "run")


def test_a_soft_stage_that_prunes_all_but_cls_is_reported(tmp_path, tiny_model_dir, real_glue_dir, caplog):
    with caplog.at_level("WARNING", logger="compress.pipeline"):
        summary = soft_stage_run(tiny_model_dir, real_glue_dir, tmp_path, final_threshold=0.9)
    tokens = summary["stages"][0]["tokens_per_layer"]
    assert tokens == [tokens[0], tokens[0], 1.0, 1.0] and tokens[0] > 2  # [CLS] alone after layer 1
    assert "only [CLS] is left from layer 2 on" in caplog.text and "collapsed" in caplog.text
    assert (tmp_path / "run" / "summary.json").is_file()  # a warning, not a failure


@pytest.mark.parametrize(
    ("tokens", "warns"),
    [([20.0, 9.0, 1.0, 1.0], True), ([20.0, 9.0, 4.0, 1.04], False), ([1.0, 1.0, 1.0, 1.0], False)],
)
def test_the_collapse_warning_spares_cls_alone_in_the_last_layer(tokens, warns):
    """[CLS] alone entering the last layer is what a budget may choose; before it, a collapse."""
    result = StageResult("soft", "ltp_soft", "", {}, "accuracy", 1.0, 1.0, {}, tokens, 1.0)
    assert (collapse_warning(result) is not None) == warns


def test_no_collapse_warning_while_real_tokens_remain(tmp_path, tiny_model_dir, real_glue_dir, caplog):
    with caplog.at_level("WARNING", logger="compress.pipeline"):
        summary = soft_stage_run(tiny_model_dir, real_glue_dir, tmp_path, final_threshold=0.0)
    assert summary["stages"][0]["tokens_per_layer"][2] > 1.5
    assert "collapsed" not in caplog.text
