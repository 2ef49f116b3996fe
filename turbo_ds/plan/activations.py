"""Activation memory of one training micro step, from the shapes alone.

What autograd keeps, per pre-norm Transformer block over ``n`` tokens of width ``d`` with MLP hidden
``m`` (elements; times the activation dtype's bytes):

    norm1 input (the block input) n*d, qkv input n*d, q|k|v 3*n*d, attention output n*d,
    its head-merged copy (proj input) n*d, norm2 input n*d, fc1 input n*d, GELU input n*m, fc2 input n*m
    = n * (9*d + 2*m)   (17*n*d for the usual m = 4d), plus LayerNorm statistics and the attention's
    softmax statistics (fp32, h*n), and, for the ``math`` kernel only, the softmax probabilities and
    scores (2 * h * n^2): what memory-efficient / flash attention avoids.

A checkpointed block keeps only its input (n*d) until backward recomputes it. Backward walks the
blocks from the last to the first; while it is inside block ``i`` the live memory is: the block
states, the gradients of every parameter after block ``i``, the saved tensors of blocks ``<= i``
(inputs only for checkpointed ones, plus block ``i``'s recomputed internals), and the gradient
buffers of that block's backward (n*d + n*m: the gradient flowing in, the MLP's hidden
gradients). The peak is the maximum of that walk. :func:`activation_timeline` returns it itemised.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from turbo_ds.plan.workload import Workload

FP32 = 4


def block_saved_elements(n: int, d: int, m: int) -> int:
    """Elements one block saves for backward (activation dtype), without statistics."""
    return n * (9 * d + 2 * m)


def block_stats_bytes(n: int, heads: int, attention: str) -> int:
    """fp32 LayerNorm mean/rstd (2 norms x 2) and the attention's log-sum-exp (h x n); the math kernel
    instead keeps the (h, n, n) probabilities and scores."""
    stats = 4 * n * FP32
    if attention == "efficient":
        return stats + heads * n * FP32
    return stats


def math_attention_elements(n: int, heads: int) -> int:
    """The math kernel's saved (h, n, n) scores and probabilities (activation dtype)."""
    return 2 * heads * n * n


def block_backward_extra_elements(n: int, d: int, m: int) -> int:
    """Gradient buffers alive at the peak inside one block's backward: the incoming gradient (n*d)
    and the MLP hidden gradients (2 * n*m) less the fc2 input already freed (n*m)."""
    return n * d + n * m


@dataclass
class StepActivations:
    """Bytes per item at the step's peak (see the module docstring). ``peak_block`` is the encoder
    block backward is inside at the peak; ``grads_bytes`` the parameter gradients alive then."""

    items: dict[str, int]
    peak_block: int
    grads_bytes: int

    @property
    def total(self) -> int:
        return sum(self.items.values())


def input_bytes(w: Workload) -> dict[str, int]:
    """Alive for the whole step: the clip batch (fp32, as the loader delivers it) and the input the
    tubelet embedding keeps for its weight gradient (the very last gradient of backward)."""
    b, s, ppt = w.batch_size, w.act_bytes, w.pixels_per_token
    video = b * w.tokens * ppt * FP32
    if w.kept < w.tokens:  # noqa: SIM108 - one comment per case
        embed_in = b * w.kept * ppt * s  # the gathered kept cubes (the linear's saved input)
    else:
        embed_in = 0 if s == FP32 else b * w.tokens * ppt * s  # Conv3d keeps its (cast) input
    items = {"input clips": video, "tubelet embedding input": embed_in}
    if w.device == "cpu" and w.vit.pos_embed == "sincos":
        # turbo_ds.models.pos_embed caches the fixed tables in host memory (fp32), the encoder's and
        # the decoder's: on a GPU that is not device memory, on the CPU it is.
        width = w.vit.embed_dim + (w.decoder.dim if w.decoder is not None else 0)
        items["position tables (cached)"] = w.tokens * width * FP32
    return items


def head_bytes(w: Workload) -> int:
    """Final norm's input and output (the pooled tokens): freed before backward enters the blocks."""
    return 2 * w.batch_size * w.seq_len * w.vit.embed_dim * w.act_bytes


def decoder_bytes(w: Workload) -> int:
    """Partial-MAE decoder and loss: blocks over kept + reconstructed tokens (never checkpointed), its
    embedding, the reconstructed tokens' prediction and fp32 targets. Backward frees them before it
    reaches the encoder."""
    if w.decoder is None or w.reconstructed == 0:
        return 0
    dec, b, s, ppt = w.decoder, w.batch_size, w.act_bytes, w.pixels_per_token
    n = w.kept + w.reconstructed
    m = int(dec.dim * dec.mlp_ratio)
    blocks = dec.depth * (
        block_saved_elements(n, dec.dim, m) * s + block_stats_bytes(n, dec.heads, w.attention)
    )
    if w.attention == "math":
        blocks += dec.depth * math_attention_elements(n, dec.heads) * s
    embed = n * dec.dim * s  # the embedded kept tokens + mask tokens (the first block's input)
    recon = w.reconstructed
    head = recon * dec.dim * 2 * s + recon * ppt * (s + 2 * FP32)  # norm, prediction, target, error
    loss_grad = 2 * recon * ppt * FP32  # backward starts here: the squared error's gradient terms
    return b * (blocks + embed + head + loss_grad)


def activation_timeline(
    w: Workload,
    block_params: list[int],
    after_blocks_params: int,
    grad_bytes: Callable[[int], int] = lambda n: 0,
) -> StepActivations:
    """Itemised activation bytes at the peak of forward + backward, and the gradients alive then.

    Candidates: the start of backward (every saved tensor, the decoder's included) and each encoder
    block's backward (decoder and final norm freed, the gradients of later parameters allocated).
    ``block_params[i]``: trainable parameters of encoder block ``i``; ``after_blocks_params``: those
    backward reaches before the blocks (final norm, head, Partial-MAE decoder); ``grad_bytes(n)``:
    the gradient bytes alive once the gradients of ``n`` parameters exist
    (:meth:`turbo_ds.plan.model_states.ModelStates.grads_in_backward`)."""
    c = w.vit
    b, s = w.batch_size, w.act_bytes
    n, d, m, L = w.seq_len, c.embed_dim, int(c.embed_dim * c.mlp_ratio), c.depth
    saved = b * (block_saved_elements(n, d, m) * s + block_stats_bytes(n, c.num_heads, w.attention))
    extra = b * block_backward_extra_elements(n, d, m) * s
    if w.attention == "math":
        saved += b * math_attention_elements(n, c.num_heads) * s
        extra += b * c.num_heads * n * n * s  # the probabilities' gradient
    block_input = b * n * d * s
    ckpt = [j < w.checkpoint_blocks for j in range(L)]
    kept = [block_input if ckpt[j] else saved for j in range(L)]
    always = input_bytes(w)
    label = "encoder blocks (saved for backward)"
    start = {
        **always,
        label: sum(kept),
        "final norm and pooling": head_bytes(w),
        "Partial-MAE decoder": decoder_bytes(w),
    }
    candidates = [(start, L, 0)]
    for i in reversed(range(L)):
        items = {
            **always,
            label: sum(kept[:i]),
            "block in backward (recomputed)" if ckpt[i] else "block in backward": saved,
            "backward gradient buffers": extra,
        }
        grads = grad_bytes(after_blocks_params + sum(block_params[i + 1 :]))
        candidates.append((items, i, grads))
    items, i, grads = max(candidates, key=lambda c: sum(c[0].values()) + c[2])
    return StepActivations(items, i, grads)
