"""Which decoder backend a run uses. ``auto`` takes the first of :data:`SPEED_ORDER` that imports and
decodes a probe clip (a tiny video written once per process); an explicit backend that cannot is a
one-line :class:`~turbo_ds.config.ConfigError` naming what is missing. Results are kept per process,
so DataLoader workers, which get the resolved name, never probe."""

from __future__ import annotations

import atexit
import os
import shutil
import tempfile
from dataclasses import dataclass

import numpy as np

from turbo_ds.config import ConfigError

# Fastest first, as measured on 2 CPU cores (docs/decoding.md, scripts/bench_decode.py): torchcodec
# leads on small clips, PyAV on 720p and long sampling; decord, slower than PyAV in every case and
# silently wrong on random access into MPEG-4 Part 2 with B-frames, comes last.
SPEED_ORDER = ("torchcodec", "pyav", "decord")
BACKENDS = ("auto", "torchcodec", "decord", "pyav")
DEVICES = ("cpu", "cuda")

_INSTALL = {
    "torchcodec": (
        "it needs FFmpeg 4-8 shared libraries (Debian/Ubuntu: apt-get install ffmpeg) and a torchcodec "
        "built for this torch (torch {torch} <-> torchcodec 0.{minor}: pip install -e '.[torchcodec]'; "
        "make setup installs it where FFmpeg is found)"
    ),
    "decord": "pip install decord (make setup installs it)",
    "pyav": "pip install av (make setup installs it)",
}

_probed: dict[tuple[str, str], str | None] = {}  # (backend, device) -> None if it works, else why not
_probe_dir: str | None = None


@dataclass(frozen=True)
class Choice:
    backend: str  # the backend decoding this run's videos
    requested: str  # data.backend as configured
    note: str  # how it was chosen
    device: str = "cpu"  # where it decodes: cpu, or a CUDA device such as cuda:0

    def line(self) -> str:
        where = "" if self.device == "cpu" else f" on {self.device}"
        return f"data: decoder backend {self.backend}{where} ({self.note})"


def _probe_clip() -> tuple[str, np.ndarray]:
    """A 64x48 MPEG-4 clip of 8 distinct frames, written once per process; (path, frames)."""
    global _probe_dir
    frames = np.zeros((8, 48, 64, 3), np.uint8)
    for i in range(8):
        frames[i, :, :, 1] = 30 * i
        frames[i, :, 8 * i : 8 * i + 8] = 255
    if _probe_dir is None:
        import av

        _probe_dir = tempfile.mkdtemp(prefix="turbo_ds_probe_")
        atexit.register(shutil.rmtree, _probe_dir, ignore_errors=True)
        with av.open(os.path.join(_probe_dir, "probe.mp4"), "w") as out:
            stream = out.add_stream("mpeg4", rate=8)  # FFmpeg's own encoder: in every FFmpeg build
            stream.width, stream.height, stream.pix_fmt, stream.bit_rate = 64, 48, "yuv420p", 2_000_000
            for f in frames:
                out.mux(stream.encode(av.VideoFrame.from_ndarray(f, format="rgb24")))
            out.mux(stream.encode())
    return os.path.join(_probe_dir, "probe.mp4"), frames


def _decoder(backend: str):
    if backend == "torchcodec":
        from turbo_ds.data.backends.torchcodec_decoder import decode_torchcodec

        return decode_torchcodec
    if backend == "decord":
        from turbo_ds.data.backends.decord_decoder import decode_decord

        return decode_decord
    from turbo_ds.data.backends.pyav_decoder import decode_pyav

    return decode_pyav


def _one_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return f"{type(e).__name__}: {text[0][:200] if text else ''}".rstrip(": ")


def probe(backend: str, device: str = "cpu") -> str | None:
    """None when ``backend`` imports and decodes the probe clip right on ``device``, else why not."""
    key = (backend, device)
    if key not in _probed:
        _probed[key] = _try(backend, device)
    return _probed[key]


def _try(backend: str, device: str) -> str | None:
    module = {"pyav": "av"}.get(backend, backend)
    try:
        __import__(module)
        if backend == "torchcodec":
            import torchcodec.decoders  # noqa: F401  (loads the FFmpeg libraries)
    except Exception as e:  # ImportError, or torchcodec's RuntimeError/OSError from loading its libraries
        return _one_line(e)
    try:
        path, frames = _probe_clip()
        kwargs = {"device": device} if device != "cpu" else {}
        out = _decoder(backend)(path, [1, 6], 8, None, **kwargs)
        out = out.cpu().numpy() if hasattr(out, "cpu") else out
    except Exception as e:
        return f"probe clip: {_one_line(e)}"
    if out.shape != (2, 48, 64, 3) or np.abs(out.astype(int) - frames[[1, 6]]).mean() > 20:
        return f"probe clip: wrong frames (shape {out.shape})"
    return None


def _not_usable(backend: str, device: str, why: str) -> ConfigError:
    import torch

    minor = ".".join(torch.__version__.split(".")[:2])
    how = _INSTALL[backend].format(torch=minor, minor=minor.split(".")[-1])
    where = f" on {device}" if device != "cpu" else ""
    return ConfigError(f"data.backend={backend}: {backend} cannot decode{where} here ({why}); {how}")


def resolve(requested: str = "auto", device: str = "cpu") -> Choice:
    """The backend for ``data.backend`` = ``requested`` on ``data.decode_device`` = ``device``."""
    if requested not in BACKENDS:
        raise ConfigError(f"data.backend={requested!r}: choose from {', '.join(BACKENDS)}")
    if device not in DEVICES:
        raise ConfigError(f"data.decode_device={device!r}: choose from {', '.join(DEVICES)}")
    if device == "cuda":
        return _resolve_cuda(requested)
    if requested != "auto":
        why = probe(requested)
        if why is not None:
            raise _not_usable(requested, device, why)
        return Choice(requested, requested, "as configured")
    skipped = []
    for backend in SPEED_ORDER:
        why = probe(backend)
        if why is None:
            tried = "; ".join(skipped)
            return Choice(backend, "auto", f"auto: fastest that decodes here{f'; {tried}' if tried else ''}")
        skipped.append(f"{backend}: {why}")
    raise ConfigError("data.backend=auto: no decoder backend works here: " + "; ".join(skipped))


def _resolve_cuda(requested: str) -> Choice:
    import torch

    if requested not in ("auto", "torchcodec"):
        raise ConfigError(
            f"data.decode_device=cuda decodes with torchcodec: set data.backend to auto or torchcodec, not {requested}"
        )
    if not torch.cuda.is_available():
        raise ConfigError("data.decode_device=cuda: torch sees no CUDA GPU here; use data.decode_device: cpu")
    device = f"cuda:{torch.cuda.current_device()}"
    why = probe("torchcodec", device)
    if why is not None:
        raise _not_usable("torchcodec", device, why)
    return Choice("torchcodec", requested, "decode_device: cuda", device)
