"""Distillation from the teacher inside the pruning stages (logits and ranking), and its checks."""

import shutil

import pytest
import torch

from compress.errors import UserError
from compress.evaluate import model_inputs
from compress.ltp import LayerImportance, PruningSpec
from compress.pipeline import plan, run_or_reuse
from compress.recipe import parse_recipe
from compress.stages import StageInputs
from compress.stages.common import load_inputs, supervised_loss, task_loss
from compress.stages.ltp_soft import soft_loss
from compress.stages.teacher import Teacher, kd_loss, rank_loss


def recipe_with(model, glue, stages):
    raw = {
        "name": "guided",
        "model": str(model),
        "task": "sst2",
        "data": {"dir": str(glue), "max_train_samples": 32, "max_eval_samples": 16},
        "stages": stages,
    }
    return parse_recipe(raw, "guided")


def first_batch(tiny_model_dir, real_glue_dir, tmp_path):
    recipe = recipe_with(tiny_model_dir, real_glue_dir, [{"name": "finetune", "kind": "finetune"}])
    model, _, task_data = load_inputs(StageInputs(recipe, str(tiny_model_dir), tmp_path / "x"))
    return model.eval(), next(iter(task_data.train_loader(8)))


def test_the_blend_is_alpha_kd_plus_the_rest_task_loss(tmp_path, tiny_model_dir, real_glue_dir):
    student, batch = first_batch(tiny_model_dir, real_glue_dir, tmp_path)
    with torch.no_grad():  # the student starts with the teacher's weights: KD is 0
        teacher = Teacher(str(tiny_model_dir), 2, False, temperature=2.0, alpha=0.25)
        loss, logs = supervised_loss(False, "off", teacher)(student, batch)
        task = task_loss(student(**model_inputs(batch), mode="off").logits, batch["labels"], False)
        assert logs["kd"] == pytest.approx(0.0, abs=1e-6)
        assert float(loss) == pytest.approx(0.75 * float(task), rel=1e-5)
        student.hf_model.classifier.bias[0] += 1.0  # a student that differs from its teacher
        loss, logs = supervised_loss(False, "off", teacher)(student, batch)
        logits = student(**model_inputs(batch), mode="off").logits
        target = teacher.outputs(batch).logits
        expected = 0.25 * kd_loss(logits, target, 2.0, False) + 0.75 * task_loss(
            logits, batch["labels"], False
        )
        assert logs["kd"] > 0 and float(loss) == pytest.approx(float(expected), rel=1e-5)


def test_the_soft_loss_takes_the_teacher_beside_its_pruning_pressure(tmp_path, tiny_model_dir, real_glue_dir):
    student, batch = first_batch(tiny_model_dir, real_glue_dir, tmp_path)
    student.spec = PruningSpec(method="ltp", max_length=64, final_threshold=0.01, temperature=1e-3)
    teacher = Teacher(str(tiny_model_dir), 2, False, temperature=2.0, alpha=1.0)
    with torch.no_grad():
        guided, logs = soft_loss(False, 0.1, None, teacher)(student, batch)
        out = student(**model_inputs(batch), mode="soft")
        expected = kd_loss(out.logits, teacher.outputs(batch).logits, 2.0, False) + 0.1 * out.kept_fraction
    assert "kd" in logs and float(guided) == pytest.approx(float(expected), rel=1e-5)
    teacher.rank_weight = 0.5  # and its ranking, in the soft forward's pruning layer
    torch.manual_seed(3)
    torch.nn.init.normal_(student.hf_model.bert.encoder.layer[1].attention.self.key.weight, std=0.2)
    with torch.no_grad():
        ranked, logs = soft_loss(False, 0.1, None, teacher)(student, batch)
        out = student(**model_inputs(batch), mode="soft", importance=True)
        ranking = rank_loss(out.importance, teacher.outputs(batch).importance[-1])
        kd = kd_loss(out.logits, teacher.outputs(batch).logits, 2.0, False)
    assert len(out.importance) == 1  # the tiny model's layer 1 (LTP's layer 0 keeps every token)
    assert logs["rank"] == pytest.approx(float(ranking), rel=1e-5) and logs["rank"] > 1e-3
    assert float(ranked) == pytest.approx(float(kd + 0.1 * out.kept_fraction + 0.5 * ranking), rel=1e-5)


def test_the_rank_loss_is_the_kl_of_the_normalised_scores_of_the_ranked_tokens():
    teacher = LayerImportance(
        torch.tensor([[0.5, 0.3, 0.1, 0.1, 0.0]]),
        torch.arange(5)[None],
        torch.tensor([[1, 1, 1, 1, 0]]).bool(),
    )
    # a layer after position 2 was dropped: positions 0, 1, 3 and padding; [CLS] (position 0) not ranked
    positions, live = torch.tensor([[0, 1, 3, 0]]), torch.tensor([[1, 1, 1, 0]]).bool()
    student = LayerImportance(torch.tensor([[0.9, 0.2, 0.6, 0.0]]), positions, live)
    p, q = torch.tensor([0.75, 0.25]), torch.tensor([0.25, 0.75])  # 0.3, 0.1 and 0.2, 0.6 normalised
    assert float(rank_loss([student], teacher)) == pytest.approx(float((p * (p / q).log()).sum()), rel=1e-5)
    same_ranking = LayerImportance(torch.tensor([[0.9, 0.6, 0.2, 0.0]]), positions, live)  # proportional
    assert float(rank_loss([same_ranking], teacher)) == pytest.approx(0.0, abs=1e-6)
    one_token = LayerImportance(
        torch.tensor([[0.9, 0.2, 0.0, 0.0]]), positions, torch.tensor([[1, 1, 0, 0]]).bool()
    )
    assert float(rank_loss([one_token], teacher)) == 0.0  # nothing to rank
    both = rank_loss([student, same_ranking], teacher)  # the mean over layers
    assert float(both) == pytest.approx(float(rank_loss([student], teacher)) / 2, rel=1e-5)


def test_the_ranking_term_teaches_the_pruning_layers_the_teachers_ranking(
    tmp_path, tiny_model_dir, real_glue_dir
):
    """A student whose attention differs from its teacher's: training on the ranking term alone
    brings its pruning layers' rankings to the teacher's last layer's, through the attention weights."""
    student, batch = first_batch(tiny_model_dir, real_glue_dir, tmp_path)
    student.spec = PruningSpec(method="topk", max_length=64, keep_ratios=[0.6, 0.6])
    torch.manual_seed(3)
    for layer in student.hf_model.bert.encoder.layer:
        torch.nn.init.normal_(layer.attention.self.key.weight, std=0.2)
    teacher = Teacher(str(tiny_model_dir), 2, False, temperature=2.0, alpha=0.0, rank_weight=1.0)
    task_only, _ = supervised_loss(False, "drop", None)(student, batch)
    loss, logs = supervised_loss(False, "drop", teacher)(student, batch)
    assert float(loss.detach()) == pytest.approx(float(task_only.detach()) + logs["rank"], rel=1e-5)
    assert logs["rank"] > 1e-3
    keys = [layer.attention.self.key.weight for layer in student.hf_model.bert.encoder.layer]
    optimizer = torch.optim.Adam(keys, lr=1e-2)
    target = teacher.outputs(batch).importance[-1]
    losses = []
    for _ in range(30):
        ranking = rank_loss(student(**model_inputs(batch), mode="drop", importance=True).importance, target)
        optimizer.zero_grad()
        ranking.backward()
        optimizer.step()
        losses.append(float(ranking))
    assert losses[-1] < 0.5 * losses[0]


def test_a_guided_pruning_stage_needs_a_teacher(tiny_model_dir, real_glue_dir):
    soft = {"name": "soft", "kind": "ltp_soft", "distill_alpha": 0.5}
    with pytest.raises(UserError, match=r"stages.soft: ltp_soft with distill_alpha needs a finetune stage"):
        recipe_with(tiny_model_dir, real_glue_dir, [soft])
    recipe_with(tiny_model_dir, real_glue_dir, [{**soft, "teacher": str(tiny_model_dir)}])  # names one
    recipe_with(tiny_model_dir, real_glue_dir, [{**soft, "distill_alpha": 0}])  # no KD, no teacher
    ranked = {"name": "topk", "kind": "topk", "distill_rank_weight": 1.0}
    with pytest.raises(UserError, match=r"stages.topk: topk with distill_rank_weight needs a finetune stage"):
        recipe_with(tiny_model_dir, real_glue_dir, [ranked])


def test_the_ranking_is_learned_from_an_unpruned_teacher(tmp_path, tiny_model_dir, real_glue_dir):
    pruned = tmp_path / "pruned_teacher"
    shutil.copytree(tiny_model_dir, pruned)
    PruningSpec(method="topk", max_length=64, keep_ratios=[0.5, 0.5]).save(pruned)
    ranked = {"name": "topk", "kind": "topk", "distill_rank_weight": 1.0, "teacher": str(pruned)}
    with pytest.raises(UserError, match=r"^stages.topk.distill_rank_weight: the teacher .* prunes tokens"):
        recipe_with(tiny_model_dir, real_glue_dir, [ranked]).stages[0].preflight()
    ranked["distill_alpha"], ranked["distill_rank_weight"] = 0.5, 0.0  # its logits alone: fine
    recipe_with(tiny_model_dir, real_glue_dir, [ranked]).stages[0].preflight()


def test_ltp_hard_trains_under_the_finetuned_teacher(tmp_path, tiny_model_dir, real_glue_dir):
    """finetune -> ltp_soft -> ltp_hard, both pruning stages guided: the hard stage's teacher is the
    finetune artifact, loaded unpruned, and the stage still drops tokens."""
    train = {"epochs": 1, "batch_size": 16, "distill_alpha": 0.5}
    recipe = recipe_with(
        tiny_model_dir,
        real_glue_dir,
        [
            {"name": "finetune", "kind": "finetune", "epochs": 1, "batch_size": 16},
            {"name": "soft", "kind": "ltp_soft", "lambda": 0.05, "final_threshold": 0.05, **train},
            {"name": "hard", "kind": "ltp_hard", **train},
        ],
    )
    steps = plan(recipe, tmp_path)
    assert steps[2].inputs.teacher == str(tmp_path / "stages" / "finetune")
    results = [run_or_reuse(step) for step in steps]
    assert results[2].kind == "ltp_hard" and results[2].gflops < results[0].gflops
