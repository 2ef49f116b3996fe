"""Classification task: named losses sum to loss, label smoothing, mae_weight, multi-view averaging; what
the tools around the loop ask of every task (the contract), and that nothing outside tasks/ names one."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from turbo_ds.config import config_from_dict
from turbo_ds.tasks import build_task, topk_accuracy


def _cfg(**sections):
    base = {
        "data": {"num_frames": 4, "img_size": 32},
        "pmae": {"decoder_dim": 32, "decoder_depth": 1, "decoder_heads": 2},
        "task": {"num_classes": 5},
    }
    for k, v in sections.items():
        base.setdefault(k, {}).update(v)
    return config_from_dict(base)


def _batch(b=4, views=None):
    g = torch.Generator().manual_seed(0)
    shape = (b, 3, 4, 32, 32) if views is None else (b, views, 3, 4, 32, 32)
    return {"video": torch.randn(*shape, generator=g), "label": torch.tensor([0, 1, 2, 3][:b])}


def test_losses_sum_and_mae_weight():
    torch.manual_seed(0)
    task = build_task(
        _cfg(
            token_dropout={"drop_ratio": 0.75},
            pmae={"enabled": True, "pmae_ratio": 0.5},
            task={"mae_weight": 0.3},
        )
    )
    torch.manual_seed(1)
    out = task(_batch())
    assert set(out.losses) == {"cls_loss", "mae_loss"}
    assert torch.allclose(out.loss, out.losses["cls_loss"] + out.losses["mae_loss"])
    assert out.losses["mae_loss"].item() == pytest.approx(
        0.3 * out.metrics["mae_loss_unweighted"].item(), rel=1e-5
    )
    assert out.batch_size == 4 and {"top1", "top5"} <= set(out.metrics)
    n_tokens = (4 // 2) * (32 // 8) ** 2
    assert out.extras["tokens_per_clip"] == n_tokens // 4  # 75% dropped
    out.loss.backward()
    assert all(p.grad is not None for n, p in task.named_parameters() if p.requires_grad), (
        "every parameter gets a gradient"
    )


def test_no_pmae_and_eval_sees_all_tokens():
    task = build_task(_cfg(token_dropout={"drop_ratio": 0.5})).eval()
    with torch.no_grad():
        out = task(_batch())
    assert set(out.losses) == {"cls_loss"}
    assert out.extras["tokens_per_clip"] == (4 // 2) * (32 // 8) ** 2


def test_label_smoothing_applies_in_training_only():
    task = build_task(_cfg(task={"label_smoothing": 0.2}))
    batch = _batch()
    torch.manual_seed(0)
    out = task(batch)
    logits = out.extras["logits"]
    assert out.losses["cls_loss"].item() == pytest.approx(
        F.cross_entropy(logits, batch["label"], label_smoothing=0.2).item(), rel=1e-5
    )
    task.eval()
    with torch.no_grad():
        out = task(batch)
    assert out.losses["cls_loss"].item() == pytest.approx(
        F.cross_entropy(out.extras["logits"], batch["label"]).item(), rel=1e-5
    )


def test_multiview_averages_softmax_over_views():
    task = build_task(_cfg()).eval()
    batch = _batch(b=2, views=3)
    with torch.no_grad():
        out = task(batch)
        per_view = task.model(batch["video"].flatten(0, 1)).logits.view(2, 3, -1)
    expected = per_view.softmax(-1).mean(1)
    assert torch.allclose(out.extras["logits"].exp(), expected, atol=1e-6)
    assert out.batch_size == 2


def test_topk_accuracy():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    acc = topk_accuracy(logits, torch.tensor([1, 2, 1]), ks=(1, 2, 5))
    assert acc["top1"].item() == pytest.approx(100 / 3)
    assert acc["top2"].item() == pytest.approx(200 / 3)
    assert acc["top5"].item() == pytest.approx(100.0)


@pytest.mark.parametrize(
    "task",
    [
        {"name": "classification", "num_classes": 5},
        {"name": "video_text", "text_model": "turbo-tiny", "context_length": 8},
        {"name": "long_video", "num_classes": 4},
        {"name": "long_video_two_stage", "num_classes": 4, "clip_frames": 2},
    ],
)
def test_video_encoder_prefix_is_where_the_tasks_encoder_sits(task):
    """What export and scripts/eval.py --weights ask of a task: its VideoViT's place in the state dict."""
    from turbo_ds.models import VideoViT

    cfg = {"model": {"name": "vit_debug", "overrides": {"pos_embed": "learned"}}, "task": task}
    cfg["token_dropout"] = {"drop_ratio": 0.5}  # long_video evaluates draws at the training ratio
    built = build_task(config_from_dict({**cfg, "data": {"num_frames": 4, "img_size": 32}}))
    prefix = type(built).video_encoder_prefix
    assert isinstance(built.get_submodule(prefix.rstrip(".")), VideoViT)
    keys = [k for k in built.state_dict() if k.startswith(prefix)]
    assert f"{prefix}blocks.0.attn.qkv.weight" in keys


BUILTIN_CONTRACT = {  # task -> (quality_metrics, plan_covers_activations)
    "classification": (("top1", "top5"), True),
    "video_text": (("t2v_r1", "v2t_r1", "align_r1", "align_roc_auc"), False),  # + the text tower
    "long_video": (("top1",), True),
    "long_video_two_stage": (("top1",), False),  # + the temporal head over clip features
}


def test_what_compare_and_the_planner_ask_of_each_task():
    from turbo_ds.tasks import Task, get_task_class, list_tasks

    assert set(BUILTIN_CONTRACT) <= set(list_tasks())
    for name, (quality, covered) in BUILTIN_CONTRACT.items():
        cls = get_task_class(name)
        assert (cls.quality_metrics(), cls.plan_covers_activations) == (quality, covered), name
    assert (Task.quality_metrics(), Task.plan_covers_activations) == ((), False)  # a task that says nothing


@pytest.mark.parametrize("name", ["classification", "video_text"])
def test_the_plan_notes_what_the_task_says_it_does_not_model(name, monkeypatch):
    from turbo_ds.plan.from_config import plan_inputs
    from turbo_ds.tasks import get_task_class

    task = {"name": name, "text_model": "turbo-tiny", "context_length": 8} if name == "video_text" else {}
    cfg = _cfg(model={"name": "vit_debug"}, task=task)
    ds = {"zero_optimization": {"stage": 0}}

    def note(cfg) -> bool:
        return any("are not modelled" in n for n in plan_inputs(cfg, ds, 1, "cpu")[3])

    covered = get_task_class(name).plan_covers_activations
    assert note(cfg) is not covered
    monkeypatch.setattr(get_task_class(name), "plan_covers_activations", not covered)
    assert note(cfg) is covered  # asked of the task, not decided by its name


def test_a_builtin_task_module_that_cannot_be_imported_leaves_the_others(monkeypatch):
    """As on a machine with torch alone, where video_text's numpy is missing: the planner still asks
    classification; a name the registry lacks names the import error."""
    from turbo_ds.config import ConfigError
    from turbo_ds.tasks import get_task_class, registry

    monkeypatch.setattr(registry, "BUILTIN_MODULES", (*registry.BUILTIN_MODULES, "turbo_ds.tasks.no_such"))
    monkeypatch.setattr(registry, "_IMPORT_ERRORS", {})
    assert get_task_class("classification").plan_covers_activations
    with pytest.raises(ConfigError, match=r"unknown task.*turbo_ds\.tasks\.no_such cannot be imported here"):
        get_task_class("no_such")


# A built-in task's name written outside turbo_ds/tasks/: (file under turbo_ds/, name) -> why it is there.
TASK_NAME_EXCEPTIONS = {
    ("config.py", "classification"): "task.name's default (config sits below tasks/ and imports none)",
    # The planner benchmark draws its random cases from the three demo configs and labels each case by
    # the demo it came from (the rows of its published tables): benchmark data, not a rule of a task.
    ("measure/bench_plan.py", "classification"): "a demo config's label",
    ("measure/bench_plan.py", "video_text"): "a demo config's label",
    ("measure/bench_plan.py", "long_video"): "a demo config's label",
}


def test_no_module_outside_tasks_names_a_builtin_task():
    """What the loop, export, the planner and compare need of a task is asked of it (tasks/base.py):
    no string constant elsewhere in the package is a built-in task's name."""
    import ast

    from helpers import ROOT

    from turbo_ds.tasks import get_task_class, list_tasks

    builtin = {n for n in list_tasks() if get_task_class(n).__module__.startswith("turbo_ds.tasks.")}
    assert set(BUILTIN_CONTRACT) <= builtin
    package = ROOT / "turbo_ds"
    found = set()
    for path in sorted(package.rglob("*.py")):
        rel = path.relative_to(package).as_posix()
        if rel.startswith("tasks/"):
            continue
        for node in ast.walk(ast.parse(path.read_text(), rel)):
            if isinstance(node, ast.Constant) and node.value in builtin:
                found.add((rel, node.value))
    assert sorted(found - set(TASK_NAME_EXCEPTIONS)) == []
    assert sorted(set(TASK_NAME_EXCEPTIONS) - found) == []  # an exception no longer needed goes
