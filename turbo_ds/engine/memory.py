"""Measured peak memory, independent of the planner's arithmetic.

- CUDA: the caching allocator's own counter (``torch.cuda.max_memory_allocated``), reset on entry.
- CPU: torch's profiler with ``profile_memory=True`` records one ``[memory]`` event per tensor
  allocation and free (bytes, signed) from the CPU allocator. Their running sum is the live tensor
  memory, and its maximum the peak. It counts tensor storage only: no Python objects, no allocator
  caching or fragmentation, none of the interpreter's own memory, which is what the planner predicts
  and what a GPU's allocator would hold. RSS would mix in all of those (and glibc keeps freed pages),
  so it is not used. Tensors alive before the region began are not seen: measure from before the
  model is built (a fresh subprocess), or start from :func:`live_tensor_bytes` (every CPU tensor
  storage reachable from Python, counted once), as the trainer does for its first step.
"""

from __future__ import annotations

import contextlib
import gc
import os
import warnings

import torch


class PeakMemory(contextlib.AbstractContextManager):
    """``with PeakMemory(device) as m: ...``; then ``m.peak_bytes`` (and ``m.peak_mb``).

    ``baseline_bytes`` is added to the CPU peak: bytes already live on entry (0 in a fresh process)."""

    def __init__(self, device: torch.device | str = "cpu", baseline_bytes: int = 0):
        self.device = torch.device(device)
        self.baseline_bytes = int(baseline_bytes)
        self.peak_bytes = 0
        self.peak_since_mark_bytes = 0
        self.phase_peaks: dict[str, int] = {}
        """CPU only: the peak inside each :func:`phase` (its every occurrence), by name."""
        self._marked = False
        self.method = "cuda_max_memory_allocated" if self.device.type == "cuda" else "profiler_memory_events"
        self._prof = None

    def __enter__(self) -> PeakMemory:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            from torch.profiler import ProfilerActivity, profile

            os.environ.setdefault("KINETO_LOG_LEVEL", "5")  # Kineto's start/stop banners on stderr
            self._prof = profile(activities=[ProfilerActivity.CPU], profile_memory=True)
            self._prof.__enter__()
        return self

    def mark(self) -> None:
        """Start of the part of interest: ``peak_since_mark_bytes`` is the peak after this point (the
        step after the setup, say), still counting every tensor allocated before it."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.reset_peak_memory_stats(self.device)  # keeps what is allocated now
        else:
            with torch.profiler.record_function(MARK):
                pass
        self._marked = True

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            self.peak_bytes = int(torch.cuda.max_memory_allocated(self.device))
            self.peak_since_mark_bytes = self.peak_bytes
            return
        self._prof.__exit__(*exc)
        self.peak_bytes = self.baseline_bytes + peak_of_events(self._prof)
        self.peak_since_mark_bytes = self.baseline_bytes + peak_of_events(self._prof, after=MARK)
        names = {e.name() for e in self._prof.profiler.kineto_results.events()}
        for name in sorted(n.removeprefix(PHASE) for n in names if n.startswith(PHASE)):
            self.phase_peaks[name] = self.baseline_bytes + peak_of_events(self._prof, within=PHASE + name)
        self._prof = None

    @property
    def peak_mb(self) -> float:
        return self.peak_bytes / 2**20


MARK = "turbo_ds.measure.mark"
PHASE = "turbo_ds.measure.phase."


@contextlib.contextmanager
def phase(name: str):
    """A named part of a measured region (a profiler range): on the CPU, :class:`PeakMemory` reports
    the peak inside it, over all its occurrences, in ``phase_peaks[name]``."""
    with torch.profiler.record_function(PHASE + name):
        yield


def peak_of_events(prof, after: str | None = None, within: str | None = None) -> int:
    """Maximum running sum of the CPU ``[memory]`` events of a finished profiler (bytes); with
    ``after``, only from the last event of that name on; with ``within``, only inside the events of
    that name (the sum always starts at the beginning: what was live when a range began counts)."""
    cpu = torch.autograd.DeviceType.CPU
    all_events = prof.profiler.kineto_results.events()
    ranges = [(0, float("inf"))]
    if after is not None:
        marks = [e.start_ns() for e in all_events if e.name() == after]
        ranges = [(max(marks) if marks else 0, float("inf"))]
    if within is not None:
        ranges = sorted((e.start_ns(), e.end_ns()) for e in all_events if e.name() == within)
    events = sorted(
        (e.start_ns(), e.nbytes()) for e in all_events if e.name() == "[memory]" and e.device_type() == cpu
    )
    live = peak = 0
    k = 0  # the first range that has not ended before the current event
    for t, nbytes in events:
        while k < len(ranges) and ranges[k][1] < t:
            k += 1
        inside = k < len(ranges) and ranges[k][0] <= t
        if inside:
            peak = max(peak, live)  # what was live when the range began counts too
        live += nbytes
        if inside:
            peak = max(peak, live)
    return peak


def live_tensor_bytes() -> int:
    """Bytes of every distinct CPU tensor storage (and gradient) reachable through Python's GC."""
    storages: dict[int, int] = {}
    with warnings.catch_warnings():  # isinstance() on some lazy modules' objects warns
        warnings.simplefilter("ignore")
        objects = gc.get_objects()
        tensors = [o for o in objects if isinstance(o, torch.Tensor)]
    del objects
    for obj in tensors:
        for t in (obj, obj.grad if obj.is_leaf else None):
            if t is None or t.device.type != "cpu" or t.is_meta:
                continue
            with contextlib.suppress(RuntimeError):  # e.g. tensors without storage (sparse, functional)
                st = t.untyped_storage()
                storages[st.data_ptr()] = st.nbytes()
    return sum(storages.values())
