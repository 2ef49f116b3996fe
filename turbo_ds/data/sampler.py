"""ShardedSampler: each rank's disjoint share of an epoch-seeded shuffle, resumable mid-epoch.

Order for epoch ``e``: a permutation of ``range(n)`` from ``numpy.random.default_rng([seed, e])``
(identity when ``shuffle`` is off), truncated to a multiple of ``world_size`` when ``drop_last``
(equal shares), then rank ``r`` takes positions ``r, r + W, r + 2W, ...``. Shares are disjoint, and
cover the split exactly when ``drop_last`` is off (then ranks may differ by one sample).

With ``group_size`` g > 1 the shuffle moves blocks of g consecutive indices (e.g. the clips of one
video), which stay consecutive in the order: ranks take interleaved positions, so a block lands in one
*global* batch (the union of the ranks' batches of a step).

The sampler yields ``(index, epoch)`` pairs so the dataset can seed augmentations per sample.
``position`` counts samples of this rank's share already *consumed* (the :class:`ResumableDataLoader`
advances it as batches come out, prefetching does not count), and ``state_dict()`` /
``load_state_dict()`` carry (epoch, position) through a checkpoint.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
from torch.utils.data import Sampler


class ShardedSampler(Sampler):
    def __init__(
        self,
        num_samples: int,
        *,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        seed: int = 0,
        drop_last: bool = True,
        group_size: int = 1,
    ):
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(f"need 0 <= rank < world_size, got rank={rank}, world_size={world_size}")
        if num_samples < (world_size if drop_last else 1):
            raise ValueError(f"{num_samples} samples cannot be split over {world_size} ranks")
        self.n, self.rank, self.world_size = int(num_samples), rank, world_size
        if group_size < 1 or num_samples % group_size:
            raise ValueError(f"group_size {group_size} must be >= 1 and divide num_samples {num_samples}")
        self.shuffle, self.seed, self.drop_last = shuffle, int(seed), drop_last
        self.group_size = int(group_size)
        self.epoch = 0
        self.position = 0
        self._resume: tuple[int, int] | None = None

    def order(self, epoch: int) -> np.ndarray:
        """The global order of epoch ``epoch`` (before sharding)."""
        if not self.shuffle:
            perm = np.arange(self.n)
        elif self.group_size > 1:  # shuffle whole groups; a group's members stay consecutive
            g = self.group_size
            groups = np.random.default_rng([self.seed, epoch]).permutation(self.n // g)
            perm = (groups[:, None] * g + np.arange(g)[None, :]).reshape(-1)
        else:
            perm = np.random.default_rng([self.seed, epoch]).permutation(self.n)
        if self.drop_last:
            perm = perm[: self.n - self.n % self.world_size]
        return perm

    def share(self, epoch: int) -> np.ndarray:
        """This rank's indices for ``epoch``, in order."""
        return self.order(epoch)[self.rank :: self.world_size]

    def __len__(self) -> int:
        if self.drop_last:
            return self.n // self.world_size
        return len(range(self.rank, self.n, self.world_size))

    def set_epoch(self, epoch: int) -> None:
        """Start epoch ``epoch`` from its beginning, unless a loaded state resumes this same epoch."""
        self.epoch = int(epoch)
        if self._resume is None or self._resume[0] != self.epoch:
            self._resume = None
            self.position = 0

    def __iter__(self) -> Iterator[tuple[int, int]]:
        start = 0
        if self._resume is not None and self._resume[0] == self.epoch:
            start = self._resume[1]
        self._resume = None
        self.position = start
        epoch = self.epoch
        for idx in self.share(epoch)[start:]:
            yield int(idx), epoch

    def advance(self, n: int) -> None:
        """Mark ``n`` more samples as consumed (called by the loader per batch)."""
        self.position = min(len(self), self.position + int(n))

    def state_dict(self) -> dict:
        return {
            "epoch": self.epoch,
            "position": self.position,
            "seed": self.seed,
            "num_samples": self.n,
            "world_size": self.world_size,
        }

    def load_state_dict(self, state: dict) -> None:
        """Resume at (epoch, position): the next iteration over epoch ``epoch`` yields the rest."""
        for key, mine in (("seed", self.seed), ("num_samples", self.n), ("world_size", self.world_size)):
            if key in state and state[key] != mine:
                raise ValueError(
                    f"sampler state has {key}={state[key]} but this sampler has {mine}; "
                    "resuming would give a different order"
                )
        self.epoch = int(state["epoch"])
        self.position = int(state["position"])
        self._resume = (self.epoch, self.position)
