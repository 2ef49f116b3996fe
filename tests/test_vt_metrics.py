"""Video-text metrics on hand-made matrices: retrieval ranks and ties, ROC-AUC, HTM-Align alignment."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from turbo_ds.metrics.alignment import alignment_chance_r1, alignment_metrics, roc_auc
from turbo_ds.metrics.retrieval import retrieval_chance_r1, retrieval_metrics


def test_identity_sim_is_perfect():
    out = retrieval_metrics(np.eye(6) + 0.01)
    for d in ("t2v", "v2t"):
        assert out[f"{d}_r1"] == out[f"{d}_r5"] == out[f"{d}_r10"] == 100.0
        assert out[f"{d}_medr"] == out[f"{d}_meanr"] == 1.0
    assert retrieval_metrics(torch.eye(6)) == out  # torch input accepted


def _sim_with_ranks(ranks: list[int], seed: int = 0) -> np.ndarray:
    """A (N, N) matrix where the ground-truth video of text i ranks ``ranks[i]`` (distinct scores)."""
    n = len(ranks)
    rng = np.random.default_rng(seed)
    sim = np.empty((n, n))
    for i, r in enumerate(ranks):
        scores = list(range(n, 0, -1))  # n, n-1, ..., 1: position p holds rank p + 1
        gt_score = scores.pop(r - 1)
        others = [j for j in range(n) if j != i]
        for j, s in zip(others, rng.permutation(scores), strict=True):
            sim[i, j] = s
        sim[i, i] = gt_score
    return sim


def test_known_ranks():
    ranks = [1, 1, 2, 3, 5, 6, 7, 10, 10, 4]
    sim = _sim_with_ranks(ranks)
    out = retrieval_metrics(sim)
    assert out["t2v_r1"] == pytest.approx(20.0)
    assert out["t2v_r5"] == pytest.approx(60.0)
    assert out["t2v_r10"] == pytest.approx(100.0)
    assert out["t2v_medr"] == pytest.approx(4.5)
    assert out["t2v_meanr"] == pytest.approx(4.9)
    # v2t is t2v of the transposed matrix (one text per video)
    out_t = retrieval_metrics(sim.T)
    assert {k.replace("t2v", "v2t"): v for k, v in out_t.items() if k.startswith("t2v")} == {
        k: v for k, v in out.items() if k.startswith("v2t")
    }


def test_ties_are_pessimistic():
    out = retrieval_metrics(np.ones((4, 4)))
    assert out["t2v_r1"] == out["v2t_r1"] == 0.0  # never 100% for a constant matrix
    assert out["t2v_medr"] == out["v2t_medr"] == 4.0
    assert out["t2v_r5"] == 100.0
    # text 0: its video ties with one other -> rank 2; text 1 likewise; text 2: strict best -> rank 1
    sim = np.array([[1.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.0, 0.0, 1.0]])
    out = retrieval_metrics(sim)
    assert out["t2v_r1"] == pytest.approx(100 / 3)
    assert out["t2v_meanr"] == pytest.approx(5 / 3)


def test_v2t_several_texts_per_video():
    # texts 0, 1 describe video 0; texts 2, 3 describe video 1
    sim = np.array(
        [
            [0.1, 0.8],
            [0.9, 0.2],
            [0.5, 0.1],
            [0.3, 0.7],
        ]
    )
    out = retrieval_metrics(sim, text_to_video=[0, 0, 1, 1])
    # video 0: best GT text 1 (0.9) is first -> rank 1; video 1: best GT text 3 (0.7) beaten by text 0
    assert out["v2t_r1"] == 50.0 and out["v2t_medr"] == 1.5 and out["v2t_meanr"] == 1.5
    # t2v: text 0 -> rank 2, text 1 -> 1, text 2 -> 2, text 3 -> 1
    assert out["t2v_r1"] == 50.0 and out["t2v_meanr"] == 1.5
    # ground-truth texts tied at the best score do not push each other down
    tied = np.array([[0.5, 0.1], [0.5, 0.1], [0.1, 0.4], [0.1, 0.2]])
    assert retrieval_metrics(tied, text_to_video=[0, 0, 1, 1])["v2t_r1"] == 100.0
    # a video without any text is left out of v2t
    out = retrieval_metrics(sim[:, :1].repeat(3, axis=1), text_to_video=[0, 0, 0, 0])
    assert out["v2t_r1"] == 100.0 and out["v2t_meanr"] == 1.0


def test_retrieval_errors():
    with pytest.raises(ValueError, match="not square"):
        retrieval_metrics(np.ones((3, 2)))
    with pytest.raises(ValueError, match="text_to_video"):
        retrieval_metrics(np.ones((3, 2)), text_to_video=[0, 1, 2])
    with pytest.raises(ValueError, match="NaN"):
        retrieval_metrics(np.full((2, 2), np.nan))
    assert retrieval_chance_r1(4) == 25.0


def test_roc_auc_hand_computed_and_ties():
    assert roc_auc([0.1, 0.4, 0.35, 0.8], [0, 0, 1, 1]) == pytest.approx(0.75)
    # pos {0.5, 0.9}, neg {0.2, 0.5}: pairs 1 + 1/2 (tie) + 1 + 1 = 3.5 of 4
    assert roc_auc(np.array([0.2, 0.5, 0.5, 0.9]), np.array([False, True, False, True])) == pytest.approx(
        0.875
    )
    assert roc_auc([1.0, 1.0, 1.0], [1, 0, 1]) == pytest.approx(0.5)
    assert roc_auc([3.0, 2.0, 1.0], [0, 1, 1]) == 0.0


def test_roc_auc_matches_pair_counting():
    rng = np.random.default_rng(0)
    for _ in range(5):
        scores = rng.integers(0, 6, size=60).astype(float)  # many ties
        labels = rng.random(60) < 0.4
        pos, neg = scores[labels], scores[~labels]
        diff = pos[:, None] - neg[None, :]
        brute = ((diff > 0).sum() + 0.5 * (diff == 0).sum()) / diff.size
        assert roc_auc(scores, labels) == pytest.approx(brute, abs=1e-12)


def test_roc_auc_single_class_is_nan():
    assert math.isnan(roc_auc([0.1, 0.2], [1, 1]))
    assert math.isnan(roc_auc([0.1, 0.2], [False, False]))


def _peaks(n_sec: int, peaks: list[int], heights: list[float]) -> np.ndarray:
    sim = np.zeros((len(peaks), n_sec))
    sim[np.arange(len(peaks)), peaks] = heights
    return sim


def _alignment_videos(nonalignable_peak: int = 0):
    nan = float("nan")
    video_a = (
        # s0: t=2, floor(2.4)=2 -> hit at the floor boundary; s1: t=4, ceil(3.2)=4 -> hit at the ceil
        # boundary; s2: not alignable (start/end NaN), max score 0.3
        _peaks(5, [2, 4, nonalignable_peak], [0.9, 0.8, 0.3]),
        np.array([2.4, 1.0, nan]),
        np.array([3.0, 3.2, nan]),
        np.array([True, True, False]),
    )
    video_b = (
        # s0: t=0 < floor(1.0) -> miss; s1: t=3 in [3, 4] -> hit
        _peaks(4, [0, 3], [0.6, 0.2]),
        [1.0, 3.0],
        [2.0, 3.5],
        [True, True],
    )
    return [video_a, video_b]


def test_alignment_metrics_known_hits():
    out = alignment_metrics(_alignment_videos())
    assert out["align_r1"] == pytest.approx(75.0)
    # positives {0.9, 0.8, 0.6, 0.2} vs the non-alignable 0.3: 3 of 4 pairs
    assert out["align_roc_auc"] == pytest.approx(0.75)
    assert out["align_num_sentences"] == 5.0 and out["align_num_alignable"] == 4.0
    # the non-alignable sentence's best time does not count in R@1
    assert alignment_metrics(_alignment_videos(nonalignable_peak=3))["align_r1"] == pytest.approx(75.0)
    # just outside ceil(end): t = 5 for [3.0, 3.9] -> miss
    miss = (_peaks(6, [5], [1.0]), [3.0], [3.9], [True])
    assert alignment_metrics([miss])["align_r1"] == 0.0


def test_alignment_auc_nan_and_chance():
    videos = _alignment_videos()
    all_alignable = [(v[0][:2], v[1][:2], v[2][:2], v[3][:2]) for v in videos]
    out = alignment_metrics(all_alignable)
    assert math.isnan(out["align_roc_auc"]) and out["align_r1"] == pytest.approx(75.0)
    # valid seconds: A.s0 {2,3}/5, A.s1 {1..4}/5, B.s0 {1,2}/4, B.s1 {3} (clipped at S-1)/4
    assert alignment_chance_r1(videos) == pytest.approx(100 * (0.4 + 0.8 + 0.5 + 0.25) / 4)
    with pytest.raises(ValueError, match="video 0"):
        alignment_metrics([(np.zeros((2, 3)), [0.0], [1.0], [True])])
