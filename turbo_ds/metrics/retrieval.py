"""Text-video retrieval metrics: recall at k and median / mean rank, both directions.

Pure numpy functions on host arrays (numpy arrays, lists, or CPU/GPU torch tensors, which are copied to
the host); no distributed code: gather the similarity matrix first.

Ranks are 1-based and ties are counted pessimistically: the rank of a query is
``1 + number of non-ground-truth items scoring >= the best ground-truth score``, so a constant
similarity matrix scores chance-or-worse, never 100% R@1, and ground-truth items tied with each other
do not push each other down.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["retrieval_chance_r1", "retrieval_metrics"]

RECALL_KS = (1, 5, 10)


def to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
    if hasattr(x, "detach"):  # torch.Tensor, without importing torch
        x = x.detach().cpu().numpy()
    return np.asarray(x, dtype=dtype)


def _rank_summary(prefix: str, ranks: np.ndarray) -> dict[str, float]:
    if ranks.size == 0:
        nan = float("nan")
        out = {f"{prefix}_r{k}": nan for k in RECALL_KS}
        return out | {f"{prefix}_medr": nan, f"{prefix}_meanr": nan}
    out = {f"{prefix}_r{k}": float(100.0 * np.mean(ranks <= k)) for k in RECALL_KS}
    out[f"{prefix}_medr"] = float(np.median(ranks))
    out[f"{prefix}_meanr"] = float(np.mean(ranks))
    return out


def retrieval_metrics(sim: Any, text_to_video: Any | None = None) -> dict[str, float]:
    """Text-to-video and video-to-text R@1/5/10 (percent), median and mean rank.

    ``sim`` is (N_text, N_video), ``sim[i, j]`` the similarity of text i and video j; ``text_to_video``
    (N_text,) ints gives the ground-truth video of each text (default: text i <-> video i, square
    ``sim``). t2v ranks each text's video among all videos; v2t ranks, for each video, its best
    ground-truth text among all texts (videos without any text are left out). Ties: see module docstring.
    Keys: ``t2v_r1, t2v_r5, t2v_r10, t2v_medr, t2v_meanr`` and the same with ``v2t_``.
    """
    sim = to_numpy(sim)
    if sim.ndim != 2 or sim.size == 0:
        raise ValueError(
            f"retrieval_metrics: sim must be a non-empty (N_text, N_video) matrix, got {sim.shape}"
        )
    if np.isnan(sim).any():
        raise ValueError("retrieval_metrics: sim contains NaN")
    n_text, n_video = sim.shape
    if text_to_video is None:
        if n_text != n_video:
            raise ValueError(
                f"retrieval_metrics: sim is {sim.shape}, not square; pass text_to_video (N_text,) to map "
                "each text to its video"
            )
        gt = np.arange(n_text)
    else:
        gt = to_numpy(text_to_video, dtype=np.int64)
        if gt.shape != (n_text,) or gt.min() < 0 or gt.max() >= n_video:
            raise ValueError(
                f"retrieval_metrics: text_to_video must be (N_text,) = ({n_text},) ints in [0, {n_video}), "
                f"got shape {gt.shape} and range [{gt.min()}, {gt.max()}]"
            )
    is_gt = np.zeros(sim.shape, dtype=bool)
    is_gt[np.arange(n_text), gt] = True

    gt_score = sim[np.arange(n_text), gt]
    t2v_ranks = 1 + ((sim >= gt_score[:, None]) & ~is_gt).sum(axis=1)

    has_text = is_gt.any(axis=0)
    best = np.where(is_gt, sim, -np.inf).max(axis=0)
    v2t_ranks = 1 + ((sim >= best[None, :]) & ~is_gt).sum(axis=0)
    return _rank_summary("t2v", t2v_ranks) | _rank_summary("v2t", v2t_ranks[has_text])


def retrieval_chance_r1(n: int) -> float:
    """Expected R@1 (percent) of a random ranking over ``n`` candidates."""
    if n < 1:
        raise ValueError(f"retrieval_chance_r1: n must be >= 1, got {n}")
    return 100.0 / n
