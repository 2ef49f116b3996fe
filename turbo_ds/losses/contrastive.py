"""Video-text contrastive losses (InfoNCE, MIL-NCE) over the global batch of all data-parallel ranks.

Two MIL-NCE forms: :func:`mil_nce`, symmetric CLIP-style (cosine x learnable scale, the mean of a
video-to-text and a text-to-video term), and :func:`milnce_miech`, the reference form of Miech et al.
(CVPR 2020; raw dot products, one denominator holding both directions).

Semantics ("local loss" over gathered features, as open_clip's ``local_loss=True``):

- every rank gathers the embeddings of all ranks with :func:`all_gather_with_grad` (rank order along
  dim 0) and scores ITS OWN rows against the GLOBAL batch; the positive of local row ``i`` is global
  column ``rank * B + i``. The loss on each rank is a mean over its ``B`` local rows.
- Data-parallel training averages gradients over ranks (DeepSpeed does). With equal ``B`` on every rank,
  the mean over ranks of the per-rank losses is the single-process loss on the concatenated batch, and the
  averaged gradient is its gradient: the backward of the gather all-reduces (SUM) the gradient flowing
  into the gathered copy, so each rank's features receive the terms of every rank's loss.
- No world-size scaling of the loss is applied. It is the patch for a gather whose backward returns only
  the local slice of the gradient (dropping the other ranks' terms) or for summed rather than averaged
  gradients; neither happens here, and scaling would make the gradient ``world_size`` times too large.

All ranks must call these functions (and backward) in the same order: they run collectives. Similarities
are computed in at least float32 (bf16/fp16 embeddings are upcast).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
import torch.nn.functional as F

__all__ = ["all_gather_with_grad", "info_nce", "mil_nce", "milnce_miech"]


def _dist_world() -> tuple[int, int]:
    """(world_size, rank); (1, 0) when torch.distributed is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_world_size(), dist.get_rank()
    return 1, 0


def _gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate ``x`` of every rank along dim 0 (rank order); every rank must have the same dim 0."""
    world, _ = _dist_world()
    size = torch.tensor([x.shape[0]], dtype=torch.long, device=x.device)
    sizes = [torch.zeros_like(size) for _ in range(world)]
    dist.all_gather(sizes, size)
    sizes_list = [int(s) for s in sizes]
    if len(set(sizes_list)) != 1:
        raise ValueError(
            f"all_gather_with_grad needs the same batch size on every rank, got {sizes_list} "
            "(use drop_last=True in the loader or pad the last batch)"
        )
    x = x.contiguous()
    parts = [torch.empty_like(x) for _ in range(world)]
    dist.all_gather(parts, x)
    return torch.cat(parts, dim=0)


class _AllGatherWithGrad(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        _, rank = _dist_world()
        ctx.rank, ctx.local = rank, x.shape[0]
        return _gather_no_grad(x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone(memory_format=torch.contiguous_format)
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        return grad[ctx.rank * ctx.local : (ctx.rank + 1) * ctx.local]


def all_gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """``x`` of every rank concatenated along dim 0 in rank order, differentiable.

    Backward all-reduces (SUM) the incoming gradient and returns this rank's slice. Assumes the same
    ``x.shape`` on every rank and raises ``ValueError`` (on every rank) when dim 0 differs. Returns ``x``
    itself when torch.distributed is not initialised or the world size is 1.
    """
    world, _ = _dist_world()
    if world == 1:
        return x
    return _AllGatherWithGrad.apply(x)


def _upcast(x: torch.Tensor) -> torch.Tensor:
    return x.to(torch.promote_types(x.dtype, torch.float32))


def _prepare(x: torch.Tensor) -> torch.Tensor:
    return F.normalize(_upcast(x), dim=-1)


def _targets(batch: int, gather: bool, device: torch.device) -> torch.Tensor:
    """Global column of each local row's positive: ``rank * B + arange(B)`` (``arange(B)`` if not gathering)."""
    offset = _dist_world()[1] * batch if gather else 0
    return offset + torch.arange(batch, device=device)


def _check_mil(
    name: str, video: torch.Tensor, text: torch.Tensor, mask: torch.Tensor | None
) -> tuple[int, int, torch.Tensor]:
    """(B, K, mask) of MIL-NCE inputs: video (B, E), text (B, K, E), mask (B, K) bool or None (all valid);
    ``ValueError`` on other shapes or a sample without a valid caption."""
    if (
        video.ndim != 2
        or text.ndim != 3
        or text.shape[0] != video.shape[0]
        or text.shape[2] != video.shape[1]
    ):
        raise ValueError(
            f"{name} expects video (B, E) and text (B, K, E), got {tuple(video.shape)} and {tuple(text.shape)}"
        )
    b, k, _ = text.shape
    if mask is None:
        mask = torch.ones(b, k, dtype=torch.bool, device=text.device)
    elif mask.shape != (b, k):
        raise ValueError(f"{name}: mask must have shape (B, K) = {(b, k)}, got {tuple(mask.shape)}")
    mask = mask.to(device=text.device, dtype=torch.bool)
    empty = (~mask.any(dim=1)).nonzero().flatten().tolist()
    if empty:
        raise ValueError(f"{name}: samples {empty} have no valid caption (mask all False)")
    return b, k, mask


def _gather_mask(mask: torch.Tensor) -> torch.Tensor:
    """The (B, K) caption masks of every rank, concatenated in rank order (no gradient)."""
    if _dist_world()[0] == 1:
        return mask
    return _gather_no_grad(mask.to(torch.uint8)).bool()


def _mil_accuracies(
    logits_v2t: torch.Tensor, logits_t2v: torch.Tensor, mask: torch.Tensor, targets: torch.Tensor
) -> dict[str, torch.Tensor]:
    """``v2t_acc`` / ``t2v_acc`` (detached, percent) from the masked (B, N, K) video-to-text and
    (B, K, N) text-to-video scores of the local rows: see :func:`mil_nce`."""
    k = logits_v2t.shape[2]
    rows = torch.arange(logits_v2t.shape[0], device=logits_v2t.device)
    with torch.no_grad():
        best_text = logits_v2t.flatten(1).argmax(dim=1) // k
        v2t_acc = (best_text == targets).float().mean() * 100.0
        first = mask.int().argmax(dim=1)  # index of the first valid caption
        t2v_acc = (logits_t2v[rows, first].argmax(dim=1) == targets).float().mean() * 100.0
    return {"v2t_acc": v2t_acc, "t2v_acc": t2v_acc}


def _mil_scores(
    v: torch.Tensor, t: torch.Tensor, mask: torch.Tensor, gather: bool, scale: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(v2t, t2v, targets, rows) of the local rows against the global batch, invalid captions masked:
    v2t (B, N, K) each local video against every global caption, t2v (B, K, N) each local caption
    against every global video; times ``scale`` if given. ``targets``: each row's global column."""
    b = v.shape[0]
    v_all = all_gather_with_grad(v) if gather else v
    t_all = all_gather_with_grad(t) if gather else t
    mask_all = _gather_mask(mask) if gather else mask
    neg_inf = torch.finfo(v.dtype).min  # finite: no inf - inf in the logsumexp backward
    v2t = torch.einsum("be,nke->bnk", v, t_all)
    t2v = torch.einsum("bke,ne->bkn", t, v_all)
    if scale is not None:
        v2t, t2v = scale * v2t, scale * t2v
    v2t = v2t.masked_fill(~mask_all[None], neg_inf)
    t2v = t2v.masked_fill(~mask[:, :, None], neg_inf)
    return v2t, t2v, _targets(b, gather, v.device), torch.arange(b, device=v.device)


def info_nce(
    video: torch.Tensor, text: torch.Tensor, logit_scale: torch.Tensor, gather: bool = True
) -> dict[str, torch.Tensor]:
    """Symmetric InfoNCE (CLIP) of the local pairs against the global batch.

    ``video`` and ``text`` are (B, E) raw embeddings (L2-normalised here), row i of each a positive
    pair; ``logit_scale`` is the multiplier of the cosine similarities (already exponentiated).
    ``gather=False`` scores against the local batch only. Returns ``loss`` = 0.5 (CE_v2t + CE_t2v) and
    the detached ``v2t_acc`` / ``t2v_acc``: percent of local rows whose argmax is their positive.
    """
    if video.ndim != 2 or text.ndim != 2 or video.shape != text.shape:
        raise ValueError(
            f"info_nce expects video and text of the same shape (B, E), got {tuple(video.shape)} and "
            f"{tuple(text.shape)}"
        )
    v, t = _prepare(video), _prepare(text)
    v_all = all_gather_with_grad(v) if gather else v
    t_all = all_gather_with_grad(t) if gather else t
    targets = _targets(v.shape[0], gather, v.device)
    logits_v2t = logit_scale * (v @ t_all.T)
    logits_t2v = logit_scale * (t @ v_all.T)
    loss = 0.5 * (F.cross_entropy(logits_v2t, targets) + F.cross_entropy(logits_t2v, targets))
    with torch.no_grad():
        v2t_acc = (logits_v2t.argmax(dim=1) == targets).float().mean() * 100.0
        t2v_acc = (logits_t2v.argmax(dim=1) == targets).float().mean() * 100.0
    return {"loss": loss, "v2t_acc": v2t_acc, "t2v_acc": t2v_acc}


def mil_nce(
    video: torch.Tensor,
    text: torch.Tensor,
    logit_scale: torch.Tensor,
    mask: torch.Tensor | None = None,
    gather: bool = True,
) -> dict[str, torch.Tensor]:
    """Symmetric, CLIP-style MIL-NCE: the K captions of sample i are all positives of video i.

    The multiple-instance positives of Miech et al. (CVPR 2020) in CLIP's form (cosine, temperature, the
    mean of two directions); their own form is :func:`milnce_miech`, whose values are not comparable.

    ``video`` is (B, E), ``text`` (B, K, E), ``mask`` (B, K) bool marks valid captions (None: all valid);
    invalid captions are neither positives nor negatives, and every sample needs at least one valid
    caption (``ValueError`` otherwise). With s = logit_scale * cosine:

    - v2t_i = -log( sum_{k valid} exp s(v_i, t_ik) / sum_{j, k valid} exp s(v_i, t_jk) ), over global texts;
    - t2v_i = -log( sum_{k valid} exp s(t_ik, v_i) / sum_{k valid} sum_j exp s(t_ik, v_j) ), over global
      videos;

    ``loss`` = 0.5 (mean v2t + mean t2v); with K = 1 this is :func:`info_nce`. ``v2t_acc``: percent of
    local videos whose best global valid text is one of their captions; ``t2v_acc``: percent of samples
    whose first valid caption (the first caption when ``mask`` is None) ranks its video first.
    """
    _, _, mask = _check_mil("mil_nce", video, text, mask)
    logits_v2t, logits_t2v, targets, rows = _mil_scores(
        _prepare(video), _prepare(text), mask, gather, logit_scale
    )
    # v2t: each local video against every global caption, its own K captions the positives.
    lse_all = torch.logsumexp(logits_v2t.flatten(1), dim=1)
    lse_pos = torch.logsumexp(logits_v2t[rows, targets], dim=1)
    loss_v2t = (lse_all - lse_pos).mean()
    # t2v: each local caption against every global video.
    lse_den = torch.logsumexp(logits_t2v.flatten(1), dim=1)
    lse_num = torch.logsumexp(logits_t2v[rows, :, targets], dim=1)
    loss_t2v = (lse_den - lse_num).mean()

    loss = 0.5 * (loss_v2t + loss_t2v)
    return {"loss": loss, **_mil_accuracies(logits_v2t, logits_t2v, mask, targets)}


def milnce_miech(
    video: torch.Tensor,
    text: torch.Tensor,
    mask: torch.Tensor | None = None,
    gather: bool = True,
) -> dict[str, torch.Tensor]:
    """MIL-NCE in the reference form of Miech et al. (CVPR 2020, and their public ``loss.py``).

    Raw dot products of the embeddings as given: no normalisation, no temperature (a caller that wants
    one scales ``video``: s * (v . t) = (s v) . t). With x[i, j, k] = video_i . text_jk over the global
    batch (``video`` (B, E), ``text`` (B, K, E), K captions per clip):

    - numerator_i = logsumexp_k x[i, i, k] (the captions of clip i);
    - denominator_i = logsumexp over x[i, :, :] and x[:, i, :] together: clip i against every caption,
      and every clip against the captions of i, in ONE denominator (the positives x[i, i, :] are in
      both halves, as in the reference);
    - ``loss`` = mean_i (denominator_i - numerator_i), over the local rows i.

    ``mask`` (B, K) bool marks valid captions (None: all valid): invalid ones are left out of numerator
    and denominator; every sample needs one. On the same similarities (``milnce_miech(s * v_hat, t_hat)``
    against ``mil_nce(v, t, s)``, hats for L2-normalised) each row's loss exceeds mil_nce's by
    log((A + B) / sqrt(A B)) >= log 2, A and B the sums of exponentials of the two halves. ``v2t_acc`` /
    ``t2v_acc`` as in :func:`mil_nce`, on the raw dot products.
    """
    _, _, mask = _check_mil("milnce_miech", video, text, mask)
    # x[i, :, :] of each local clip i (v2t) and x[:, i, :] of each local sample i (t2v).
    v2t, t2v, targets, rows = _mil_scores(_upcast(video), _upcast(text), mask, gather)
    numerator = torch.logsumexp(v2t[rows, targets], dim=1)
    denominator = torch.logsumexp(torch.cat([v2t.flatten(1), t2v.flatten(1)], dim=1), dim=1)
    loss = (denominator - numerator).mean()
    return {"loss": loss, **_mil_accuracies(v2t, t2v, mask, targets)}
