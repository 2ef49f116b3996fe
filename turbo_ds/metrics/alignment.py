"""HTM-Align temporal alignment metrics (Han et al., TAN): R@1 of alignable sentences, ROC-AUC of
alignability, and their chance levels; plus the ROC-AUC they use.

Pure numpy functions on host arrays (numpy arrays, lists, or CPU/GPU torch tensors); no distributed
code: gather each video's sentence x second similarity first.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from turbo_ds.metrics.retrieval import to_numpy

__all__ = ["alignment_chance_r1", "alignment_metrics", "roc_auc"]


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
    scores = to_numpy(scores).ravel()
    labels = to_numpy(labels, dtype=bool).ravel()
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
    sim = to_numpy(sim)
    start, end = to_numpy(start).ravel(), to_numpy(end).ravel()
    alignable = to_numpy(alignable, dtype=bool).ravel()
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
