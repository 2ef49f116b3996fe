"""decord backend: ``VideoReader.get_batch`` of the wanted frames at the reduced size, one thread.

decord's frame count can exceed the frames that decode, and ``get_batch`` past the end can hang, so
the caller passes the count checked at index-build time (``num_frames`` in the index). decord decides
by itself when to seek or decode on inside ``get_batch``.

Known limits (tests/test_data_decode.py): it cannot copy out frames of some widths (16, 24, 48, 72 px
seen: its row padding breaks the copy) nor open a rotated video at full size; both raise, so
``decode_frames`` falls back to PyAV (widths are remembered per process, in ``BAD_WIDTHS``). It
returns wrong frames, silently, on random access into MPEG-4 Part 2 streams with B-frames.
"""

from __future__ import annotations

import numpy as np

from turbo_ds.data.backends.common import DecodeError, check_file, clamp

# Output widths decord cannot copy out, learnt per process so later samples at that width go
# straight to the fallback.
BAD_WIDTHS: set[int] = set()


def decode_decord(path: str, indices, num_frames: int | None = None, size: tuple[int, int] | None = None):
    """(T, H, W, 3) uint8 numpy; ``size`` = (w, h) decodes at reduced size."""
    import decord

    check_file(path)
    if size is not None and size[0] in BAD_WIDTHS:
        raise DecodeError(path, "read-failed", f"decord: cannot copy out frames {size[0]} px wide")
    kwargs = {"num_threads": 1, "ctx": decord.cpu(0)}
    if size is not None:
        kwargs.update(width=int(size[0]), height=int(size[1]))
    try:
        vr = decord.VideoReader(path, **kwargs)
    except Exception as e:
        raise DecodeError(path, "unreadable", f"decord: {e}") from e
    try:
        n = len(vr) if num_frames is None else min(len(vr), int(num_frames))
        if n <= 0:
            raise DecodeError(path, "no-frames")
        uniq, inverse = np.unique(clamp(indices, n), return_inverse=True)
        frames = vr.get_batch(uniq.tolist()).asnumpy()
        return frames[inverse]
    except DecodeError:
        raise
    except Exception as e:
        if size is not None and "size must exactly match" in str(e):
            BAD_WIDTHS.add(int(size[0]))
        raise DecodeError(path, "read-failed", f"decord: {e}") from e
    finally:
        del vr
