"""Contrastive losses: 2 gloo ranks with gathered features match one process on the whole batch (loss and
averaged grads, incl. logit_scale); MIL-NCE with K=1 is InfoNCE; Miech et al.'s reference MIL-NCE equals
the formula written out, at world 1 and 2, and is not the symmetric one; masking; accuracies; errors."""

from __future__ import annotations

import math
import os
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from helpers import free_port
from torch import nn

from turbo_ds.losses.contrastive import all_gather_with_grad, info_nce, mil_nce, milnce_miech

WORLD, BATCH, K, D_IN, EMB = 2, 8, 3, 6, 5
LOSSES = ("info_nce", "mil_nce", "milnce_miech")
DTYPE = torch.float64
TOL = 1e-10  # float64 differences are ~1e-15


def _setup():
    """Same projections and inputs on every rank. float64: in fp32 the grads (up to ~7) differ from the
    single-process ones by ~5e-7, too close to a 1e-6 tolerance to hold on every CPU/BLAS."""
    torch.manual_seed(0)
    video_proj, text_proj = nn.Linear(D_IN, EMB, dtype=DTYPE), nn.Linear(D_IN, EMB, dtype=DTYPE)
    log_scale = nn.Parameter(torch.tensor(math.log(10.0), dtype=DTYPE))
    g = torch.Generator().manual_seed(1)
    x_video = torch.randn(BATCH, D_IN, generator=g, dtype=DTYPE)
    x_text = torch.randn(BATCH, K, D_IN, generator=g, dtype=DTYPE)
    mask = torch.rand(BATCH, K, generator=g) < 0.6
    mask[:, 1] = True  # at least one valid caption, and some samples whose first caption is masked
    return video_proj, text_proj, log_scale, x_video, x_text, mask


def _run(
    loss_name: str, rows: slice
) -> tuple[torch.Tensor, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """Loss, grads and metrics of ``loss_name`` on ``rows`` of the batch (gathering if a group exists)."""
    video_proj, text_proj, log_scale, x_video, x_text, mask = _setup()
    params = {"video": video_proj, "text": text_proj}
    v = video_proj(x_video[rows])
    if loss_name == "info_nce":
        out = info_nce(v, text_proj(x_text[rows, 0]), log_scale.exp())
    elif loss_name == "mil_nce":
        out = mil_nce(v, text_proj(x_text[rows]), log_scale.exp(), mask=mask[rows])
    else:  # raw dot products, no temperature
        out = milnce_miech(v, text_proj(x_text[rows]), mask=mask[rows])
    out["loss"].backward()
    grads = {f"{n}.{p}": t.grad.clone() for n, m in params.items() for p, t in m.named_parameters()}
    if log_scale.grad is not None:
        grads["log_scale"] = log_scale.grad.clone()
    return out["loss"].detach(), grads, {k: v for k, v in out.items() if k != "loss"}


def _worker(rank: int, world: int, port: int, out_dir: str) -> None:
    os.environ.update(OMP_NUM_THREADS="1")
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=world)
    results = {}
    try:
        local = BATCH // world
        rows = slice(rank * local, (rank + 1) * local)
        for name in LOSSES:
            loss, grads, metrics = _run(name, rows)
            dist.all_reduce(loss)
            for t in (*grads.values(), *metrics.values()):
                dist.all_reduce(t)
            results[name] = {
                "loss": loss / world,
                "grads": {k: g / world for k, g in grads.items()},
                "metrics": {k: m / world for k, m in metrics.items()},
            }
        # rank order of the gather, and the backward sums every rank's gradient into this rank's slice
        x = torch.full((2, 1), float(rank), requires_grad=True)
        gathered = all_gather_with_grad(x)
        coef = torch.arange(4.0)[:, None] * (rank + 1)  # rank 0: 0,1,2,3; rank 1: 0,2,4,6
        (gathered * coef).sum().backward()
        results["gather"] = {"value": gathered.detach(), "grad": x.grad}
        try:
            all_gather_with_grad(torch.zeros(rank + 1, 2))
            results["unequal"] = ""
        except ValueError as e:
            results["unequal"] = str(e)
    finally:
        dist.destroy_process_group()
    torch.save(results, Path(out_dir) / f"rank{rank}.pt")


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory):
    out = tmp_path_factory.mktemp("contrastive2")
    mp.start_processes(
        _worker, args=(WORLD, free_port(), str(out)), nprocs=WORLD, join=True, start_method="spawn"
    )
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", LOSSES)
def test_two_ranks_match_single_process(two_ranks, name):
    ref_loss, ref_grads, ref_metrics = _run(name, slice(None))  # no process group here: gather is a no-op
    for res in two_ranks:
        r = res[name]
        torch.testing.assert_close(r["loss"], ref_loss, atol=TOL, rtol=0)
        assert r["grads"].keys() == ref_grads.keys()
        for k, g in ref_grads.items():
            torch.testing.assert_close(r["grads"][k], g, atol=TOL, rtol=0, msg=f"{name}: grad of {k}")
        if name != "milnce_miech":  # the reference form has no temperature
            assert ref_grads["log_scale"].abs() > 1e-4  # the logit_scale gradient is really compared
        torch.testing.assert_close(r["metrics"], ref_metrics)  # accuracies: mean over ranks = global


@pytest.mark.slow
def test_gather_order_backward_and_unequal_sizes(two_ranks):
    for rank, res in enumerate(two_ranks):
        assert res["gather"]["value"].flatten().tolist() == [0.0, 0.0, 1.0, 1.0]
        # d/dx_r of sum over ranks of coef_r'[slice r]: rank 0 -> (0+0, 1+2), rank 1 -> (2+4, 3+6)
        expected = [[0.0, 3.0], [6.0, 9.0]][rank]
        assert res["gather"]["grad"].flatten().tolist() == expected
        assert "same batch size on every rank" in res["unequal"] and "[1, 2]" in res["unequal"]


def _miech_reference(video: torch.Tensor, text: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Miech et al.'s MIL-NCE written out clip by clip: -log(sum of exp over the positives of clip i /
    sum of exp over (clip i, every valid caption) and (every clip, the valid captions of i))."""
    n, k = mask.shape
    dot = [[[video[i] @ text[j, c] for c in range(k)] for j in range(n)] for i in range(n)]
    losses = []
    for i in range(n):
        pos = [dot[i][i][c] for c in range(k) if mask[i, c]]
        den = [dot[i][j][c] for j in range(n) for c in range(k) if mask[j, c]]
        den += [dot[j][i][c] for j in range(n) for c in range(k) if mask[i, c]]
        losses.append(torch.stack(den).exp().sum().log() - torch.stack(pos).exp().sum().log())
    return torch.stack(losses).mean()


def _reference_run() -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """:func:`_miech_reference`'s loss and grads on :func:`_setup`'s whole batch."""
    video_proj, text_proj, _, x_video, x_text, mask = _setup()
    loss = _miech_reference(video_proj(x_video), text_proj(x_text), mask)
    loss.backward()
    params = {"video": video_proj, "text": text_proj}
    grads = {f"{n}.{p}": t.grad.clone() for n, m in params.items() for p, t in m.named_parameters()}
    return loss.detach(), grads


def _assert_matches_reference(loss, grads, ref_loss, ref_grads):
    torch.testing.assert_close(loss, ref_loss, atol=TOL, rtol=0)
    assert grads.keys() == ref_grads.keys()
    for k, g in ref_grads.items():
        torch.testing.assert_close(grads[k], g, atol=TOL, rtol=0, msg=f"grad of {k}")


def test_milnce_miech_equals_the_reference_formula():
    ref_loss, ref_grads = _reference_run()
    loss, grads, _ = _run("milnce_miech", slice(None))
    _assert_matches_reference(loss, grads, ref_loss, ref_grads)
    assert _setup()[-1].sum() < BATCH * K  # some captions are masked out
    # by hand: two orthonormal clips, one caption each equal to its clip: x = I, so
    # loss = log(e + 1 + e + 1) - 1 = log 2 + log(1 + 1/e); symmetric MIL-NCE at scale 1: log(1 + 1/e)
    e = torch.eye(2, dtype=DTYPE)
    hand = milnce_miech(e, e[:, None])["loss"]
    assert hand.item() == pytest.approx(math.log(2) + math.log(1 + math.exp(-1)), abs=1e-12)
    assert mil_nce(e, e[:, None], torch.tensor(1.0))["loss"].item() == pytest.approx(
        math.log(1 + math.exp(-1))
    )


@pytest.mark.slow
def test_milnce_miech_two_ranks_equal_the_reference_formula(two_ranks):
    ref_loss, ref_grads = _reference_run()
    for res in two_ranks:
        r = res["milnce_miech"]
        _assert_matches_reference(r["loss"], r["grads"], ref_loss, ref_grads)


def test_milnce_miech_is_not_the_symmetric_mil_nce():
    """On the same similarities (scale s, unit embeddings) each row exceeds mil_nce by >= log 2, and the
    gradients differ."""
    video, text = _emb(b=5, k=3, seed=3)
    scale = torch.tensor(4.0, dtype=torch.float64)
    v1, t1 = video.clone().requires_grad_(), text.clone().requires_grad_()
    v2, t2 = video.clone().requires_grad_(), text.clone().requires_grad_()
    sym = mil_nce(v1, t1, scale)
    ref = milnce_miech(scale * F.normalize(v2, dim=-1), F.normalize(t2, dim=-1))
    gap = (ref["loss"] - sym["loss"]).item()
    assert gap > math.log(2) + 1e-3
    sym["loss"].backward()
    ref["loss"].backward()
    assert (v1.grad - v2.grad).abs().max() > 1e-3 and (t1.grad - t2.grad).abs().max() > 1e-3
    # and without normalisation the raw embeddings' norms count (mil_nce ignores them)
    assert milnce_miech(2 * video, text)["loss"] != milnce_miech(video, text)["loss"]
    assert mil_nce(2 * video, text, scale)["loss"] == mil_nce(video, text, scale)["loss"]


def test_milnce_miech_masked_captions_are_ignored():
    video, text = _emb(b=4, k=3)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    other = text.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 7, dtype=torch.float64) * 3
    t = other.clone().requires_grad_()
    a, b = milnce_miech(video, text, mask=mask), milnce_miech(video, t, mask=mask)
    assert a["loss"] == b["loss"]
    torch.testing.assert_close(a["loss"], _miech_reference(video, text, mask), atol=1e-12, rtol=0)
    b["loss"].backward()
    assert t.grad[~mask].abs().max() == 0 and t.grad[mask].abs().max() > 0
    assert milnce_miech(video, text)["loss"] != a["loss"]  # the mask does change the loss
    full = milnce_miech(video, text, mask=torch.ones(4, 3, dtype=torch.bool))
    assert full["loss"] == milnce_miech(video, text)["loss"]
    # accuracies as mil_nce's (the same argmaxes at scale 1 on unit embeddings)
    vn, tn = F.normalize(video, dim=-1), F.normalize(text, dim=-1)
    sym, ref = mil_nce(video, text, torch.tensor(1.0), mask=mask), milnce_miech(vn, tn, mask=mask)
    assert sym["v2t_acc"] == ref["v2t_acc"] and sym["t2v_acc"] == ref["t2v_acc"]
    with pytest.raises(ValueError, match=r"milnce_miech: samples \[3\] have no valid caption"):
        milnce_miech(video, text, mask=torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 0]]).bool())
    with pytest.raises(ValueError, match=r"milnce_miech expects video \(B, E\) and text \(B, K, E\)"):
        milnce_miech(video, text[:, 0])


def _emb(b=4, k=3, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 7, generator=g, dtype=dtype), torch.randn(b, k, 7, generator=g, dtype=dtype)


def test_mil_nce_k1_equals_info_nce():
    video, text = _emb(b=6, k=1)
    scale = torch.tensor(7.0, dtype=torch.float64)
    v1, t1 = video.clone().requires_grad_(), text.clone().requires_grad_()
    v2, t2 = video.clone().requires_grad_(), text[:, 0].clone().requires_grad_()
    a, b = mil_nce(v1, t1, scale), info_nce(v2, t2, scale)
    torch.testing.assert_close(a["loss"], b["loss"], atol=1e-12, rtol=0)
    assert a["v2t_acc"] == b["v2t_acc"] and a["t2v_acc"] == b["t2v_acc"]
    a["loss"].backward()
    b["loss"].backward()
    torch.testing.assert_close(v1.grad, v2.grad, atol=1e-12, rtol=0)
    torch.testing.assert_close(t1.grad[:, 0], t2.grad, atol=1e-12, rtol=0)
    # a full mask is the same as no mask
    full = mil_nce(video, text, scale, mask=torch.ones(6, 1, dtype=torch.bool))
    torch.testing.assert_close(full["loss"], a["loss"].detach(), atol=0, rtol=0)


def test_mil_nce_masked_captions_are_ignored():
    video, text = _emb(b=4, k=3)
    mask = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 1], [0, 0, 1]], dtype=torch.bool)
    scale = torch.tensor(5.0, dtype=torch.float64)
    other = text.clone()
    other[~mask] = torch.randn(int((~mask).sum()), 7, dtype=torch.float64) * 3
    t = other.clone().requires_grad_()
    a, b = mil_nce(video, text, scale, mask=mask), mil_nce(video, t, scale, mask=mask)
    assert a["loss"] == b["loss"]
    b["loss"].backward()
    assert t.grad[~mask].abs().max() == 0 and t.grad[mask].abs().max() > 0
    assert mil_nce(video, text, scale)["loss"] != a["loss"]  # the mask does change the loss


def test_accuracies_hand_made():
    e = torch.eye(3)
    video = torch.stack([e[0], e[1], e[1] + 0.1 * e[2]])
    text = e.clone()
    out = info_nce(video, text, torch.tensor(1.0))
    # v2t: v0 -> t0 yes, v1 -> t1 yes, v2 ~ e1 -> t1 no; t2v: t0 -> v0, t1 -> v1 (1 > 0.995), t2 -> v2
    assert out["v2t_acc"].item() == pytest.approx(200 / 3)
    assert out["t2v_acc"].item() == pytest.approx(100.0)
    assert not out["v2t_acc"].requires_grad

    video = torch.stack([e[0], e[1]])
    text = torch.stack(
        [
            torch.stack([e[2] + 0.2 * e[1], e[0] + 0.3 * e[2]]),  # sample 0: first caption is nearer v1
            torch.stack([e[1], e[0]]),  # sample 1: second caption is exactly v0
        ]
    )
    out = mil_nce(video, text, torch.tensor(1.0))
    # v2t: v0's best text is sample 1's second caption -> miss; v1 -> sample 1's first -> hit
    assert out["v2t_acc"].item() == 50.0 and out["t2v_acc"].item() == 50.0
    masked = mil_nce(video, text, torch.tensor(1.0), mask=torch.tensor([[True, True], [True, False]]))
    assert masked["v2t_acc"].item() == 100.0 and masked["t2v_acc"].item() == 50.0
    # t2v uses the first VALID caption: sample 0's second caption ranks v0 first
    first_masked = mil_nce(video, text, torch.tensor(1.0), mask=torch.tensor([[False, True], [True, True]]))
    assert first_masked["t2v_acc"].item() == 100.0


def test_errors():
    video, text = _emb(b=3, k=2)
    scale = torch.tensor(1.0)
    with pytest.raises(ValueError, match=r"samples \[1\] have no valid caption"):
        mil_nce(video, text, scale, mask=torch.tensor([[True, False], [False, False], [True, True]]))
    with pytest.raises(ValueError, match="mask must have shape"):
        mil_nce(video, text, scale, mask=torch.ones(3, 3, dtype=torch.bool))
    with pytest.raises(ValueError, match=r"\(B, K, E\)"):
        mil_nce(video, text[:, 0], scale)
    with pytest.raises(ValueError, match="same shape"):
        info_nce(video, text[:2, 0], scale)


def test_no_group_and_low_precision():
    video, text = _emb(b=4, k=1, dtype=torch.float32)
    x = torch.randn(3, 2)
    assert all_gather_with_grad(x) is x
    bf = info_nce(video.bfloat16(), text[:, 0].bfloat16(), torch.tensor(10.0))
    assert bf["loss"].dtype == torch.float32  # similarities are computed in float32
    ref = info_nce(video, text[:, 0], torch.tensor(10.0), gather=False)
    assert abs(bf["loss"].item() - ref["loss"].item()) < 0.1
