"""Contrastive losses: 2 gloo ranks with gathered features match one process on the whole batch (loss and
averaged grads, incl. logit_scale); MIL-NCE with K=1 is InfoNCE; masking; accuracies; errors."""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn

from turbo_ds.tasks.contrastive import all_gather_with_grad, info_nce, mil_nce

WORLD, BATCH, K, D_IN, EMB = 2, 8, 3, 6, 5
DTYPE = torch.float64
TOL = 1e-10  # float64 differences are ~1e-15


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


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
    else:
        out = mil_nce(v, text_proj(x_text[rows]), log_scale.exp(), mask=mask[rows])
    out["loss"].backward()
    grads = {f"{n}.{p}": t.grad.clone() for n, m in params.items() for p, t in m.named_parameters()}
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
        for name in ("info_nce", "mil_nce"):
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
        _worker, args=(WORLD, _free_port(), str(out)), nprocs=WORLD, join=True, start_method="spawn"
    )
    return [torch.load(out / f"rank{r}.pt") for r in range(WORLD)]


@pytest.mark.slow
@pytest.mark.parametrize("name", ["info_nce", "mil_nce"])
def test_two_ranks_match_single_process(two_ranks, name):
    ref_loss, ref_grads, ref_metrics = _run(name, slice(None))  # no process group here: gather is a no-op
    for res in two_ranks:
        r = res[name]
        torch.testing.assert_close(r["loss"], ref_loss, atol=TOL, rtol=0)
        assert r["grads"].keys() == ref_grads.keys()
        for k, g in ref_grads.items():
            torch.testing.assert_close(r["grads"][k], g, atol=TOL, rtol=0, msg=f"{name}: grad of {k}")
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
