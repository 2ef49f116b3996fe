"""Video-text evaluation metrics: retrieval recall/rank, ROC-AUC, HTM-Align temporal alignment.

Pure numpy functions on host arrays (numpy arrays, lists, or CPU/GPU torch tensors, which are copied to
the host); no distributed code: gather the similarity matrix first.

Ranks are 1-based and ties are counted pessimistically: the rank of a query is
``1 + number of non-ground-truth items scoring >= the best ground-truth score``, so a constant
similarity matrix scores chance-or-worse, never 100% R@1, and ground-truth items tied with each other
do not push each other down.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

__all__ = [
    "alignment_chance_r1",
    "alignment_metrics",
    "retrieval_chance_r1",
    "retrieval_metrics",
    "roc_auc",
]

RECALL_KS = (1, 5, 10)


def _to_numpy(x: Any, dtype: Any = np.float64) -> np.ndarray:
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
    sim = _to_numpy(sim)
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
        gt = _to_numpy(text_to_video, dtype=np.int64)
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


def _average_ranks(x: np.ndarray) -> np.ndarray:
    """1-based ranks of ``x`` (ascending), tied values get the average of their ranks."""
    order = np.argsort(x, kind="mergesort")
    xs = x[order]
    new_group = np.r_[True, xs[1:] != xs[:-1]]
    starts = np.flatnonzero(new_group)
    ends = np.r_[starts[1:], x.size]  # exclusive: the group holds sorted positions starts..ends-1
    avg = (starts + 1 + ends) / 2.0
    ranks = np.empty(x.size, dtype=np.float64)
    ranks[order] = avg[np.cumsum(new_group) - 1]
    return ranks


def roc_auc(scores: Any, labels: Any) -> float:
    """ROC-AUC in [0, 1] (Mann-Whitney U with average ranks for ties: a tied positive/negative pair counts
    1/2). ``labels`` are bool or 0/1; NaN when only one class is present."""
    scores = _to_numpy(scores).ravel()
    labels = _to_numpy(labels, dtype=bool).ravel()
    if scores.shape != labels.shape:
        raise ValueError(f"roc_auc: {scores.size} scores but {labels.size} labels")
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    ranks = _average_ranks(scores)
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


AlignmentVideo = tuple[Any, Any, Any, Any]
"""(sim (M, S) sentence x second similarity, start_s (M,), end_s (M,), alignable (M,) bool)."""


def _check_video(i: int, video: AlignmentVideo) -> tuple[np.ndarray, ...]:
    if len(video) != 4:
        raise ValueError(
            f"alignment video {i}: expected (sim, start_s, end_s, alignable), got {len(video)} items"
        )
    sim, start, end, alignable = video
    sim = _to_numpy(sim)
    start, end = _to_numpy(start).ravel(), _to_numpy(end).ravel()
    alignable = _to_numpy(alignable, dtype=bool).ravel()
    if sim.ndim != 2 or sim.shape[1] == 0:
        raise ValueError(
            f"alignment video {i}: sim must be (M sentences, S seconds) with S > 0, got {sim.shape}"
        )
    m = sim.shape[0]
    if not (start.shape == end.shape == alignable.shape == (m,)):
        raise ValueError(
            f"alignment video {i}: sim has {m} sentences but start_s/end_s/alignable have "
            f"{start.size}/{end.size}/{alignable.size} entries"
        )
    return sim, start, end, alignable


def alignment_metrics(videos: Sequence[AlignmentVideo]) -> dict[str, float]:
    """HTM-Align metrics (Han, Xie, Zisserman, CVPR 2022), pooled over the sentences of all videos.

    ``align_r1``: percent of alignable sentences whose best second ``t = argmax_t sim[m, t]`` (integer
    index 0..S-1; ties take the earliest) satisfies ``floor(start) <= t <= ceil(end)``.
    ``align_roc_auc``: ROC-AUC of alignability, score ``max_t sim[m, t]``, label the alignable flag, over
    all sentences (NaN with a single class). Also ``align_num_sentences`` and ``align_num_alignable``.
    start/end of non-alignable sentences are ignored (may be NaN).
    """
    hits, scores, labels = [], [], []
    for i, video in enumerate(videos):
        sim, start, end, alignable = _check_video(i, video)
        best_t = sim.argmax(axis=1)
        scores.append(sim.max(axis=1))
        labels.append(alignable)
        t, s, e = best_t[alignable], start[alignable], end[alignable]
        hits.append((np.floor(s) <= t) & (t <= np.ceil(e)))
    hit = np.concatenate(hits) if hits else np.zeros(0, dtype=bool)
    score = np.concatenate(scores) if scores else np.zeros(0)
    label = np.concatenate(labels) if labels else np.zeros(0, dtype=bool)
    return {
        "align_r1": float(100.0 * hit.mean()) if hit.size else float("nan"),
        "align_roc_auc": roc_auc(score, label),
        "align_num_sentences": float(label.size),
        "align_num_alignable": float(hit.size),
    }


def alignment_chance_r1(videos: Sequence[AlignmentVideo]) -> float:
    """Expected ``align_r1`` (percent) of picking a second uniformly at random: the mean over alignable
    sentences of (#seconds t in 0..S-1 with floor(start) <= t <= ceil(end)) / S."""
    fractions = []
    for i, video in enumerate(videos):
        sim, start, end, alignable = _check_video(i, video)
        n_sec = sim.shape[1]
        lo = np.maximum(np.floor(start[alignable]), 0)
        hi = np.minimum(np.ceil(end[alignable]), n_sec - 1)
        fractions.append(np.maximum(hi - lo + 1, 0) / n_sec)
    frac = np.concatenate(fractions) if fractions else np.zeros(0)
    return float(100.0 * frac.mean()) if frac.size else float("nan")
