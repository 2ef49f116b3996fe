"""The launch variables (RANK, WORLD_SIZE, LOCAL_RANK, LOCAL_WORLD_SIZE, MASTER_ADDR, MASTER_PORT) that an
``srun`` step implies, so that ``srun python scripts/train.py ...`` needs no wrapper that copies SLURM's
variables over. Pure standard library, read from a mapping: testable without SLURM.

Only a task of an ``srun`` step is trusted: the batch shell of ``sbatch`` has SLURM_PROCID=0 and the job's
SLURM_NTASKS too, but runs once, and its SLURM_STEP_ID is one of SLURM's reserved step ids (the batch,
extern and interactive steps, 0xfffffffa and above; printed signed they are negative). A variable that is
already set always wins: a launcher started inside the step (torchrun, deepspeed) sets its own RANK.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping

_RESERVED_STEP_IDS = 0xFFFFFFF0  # batch (0xfffffffb), extern, interactive... are above this
_PORT_BASE, _PORT_SPAN = 20000, 10000  # 20000-29999: below Linux's ephemeral range (32768-)


def _split_top(text: str) -> list[str]:
    """Split on the commas outside brackets: ``a[1-2,5],b`` -> ``a[1-2,5]``, ``b``."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p]


def _range_values(spec: str) -> Iterator[str]:
    """``01-03,07`` -> 01, 02, 03, 07: zero padding kept as written."""
    for piece in spec.split(","):
        lo, _, hi = piece.partition("-")
        if not hi:
            yield lo
            continue
        width = len(lo) if lo.startswith("0") else 0
        for n in range(int(lo), int(hi) + 1):
            yield str(n).zfill(width)


def _expand_one(item: str) -> Iterator[str]:
    m = re.search(r"\[([^\]]*)\]", item)
    if m is None:
        yield item
        return
    head, tail = item[: m.start()], item[m.end() :]
    for value in _range_values(m.group(1)):
        for rest in _expand_one(tail):  # several brackets: rack[1-2]-n[01-04]
            yield head + value + rest


def expand_hostlist(hostlist: str) -> Iterator[str]:
    """SLURM's hostlist syntax, lazily: ``node[01-02,07],gpu-[1-2]`` -> node01 node02 node07 gpu-1 gpu-2,
    in the order written (``scontrol show hostnames`` without scontrol, which a node may lack)."""
    for item in _split_top(hostlist.strip()):
        yield from _expand_one(item)


def first_host(hostlist: str) -> str:
    host = next(expand_hostlist(hostlist), "")
    if not host:
        raise ValueError(f"empty SLURM node list {hostlist!r}")
    return host


def tasks_per_node(spec: str) -> list[int]:
    """``2(x3),1`` -> [2, 2, 2, 1] (SLURM_STEP_TASKS_PER_NODE / SLURM_TASKS_PER_NODE)."""
    counts: list[int] = []
    for piece in spec.split(","):
        m = re.fullmatch(r"\s*(\d+)(?:\(x(\d+)\))?\s*", piece)
        if m is None:
            raise ValueError(f"cannot parse tasks per node {spec!r}")
        counts += [int(m.group(1))] * int(m.group(2) or 1)
    return counts


def in_srun_step(environ: Mapping[str, str]) -> bool:
    """A task of a real step (id 0, 1, ...), not the batch shell or an salloc/extern step."""
    try:
        step = int(environ["SLURM_STEP_ID"])
    except (KeyError, ValueError):
        return False
    has_world = "SLURM_STEP_NUM_TASKS" in environ or "SLURM_NTASKS" in environ
    return 0 <= step < _RESERVED_STEP_IDS and "SLURM_PROCID" in environ and has_world


def _local_world(environ: Mapping[str, str]) -> str | None:
    """Tasks on this node: this node's entry of the step's tasks per node, else --ntasks-per-node."""
    spec = environ.get("SLURM_STEP_TASKS_PER_NODE") or environ.get("SLURM_TASKS_PER_NODE")
    if spec:
        try:
            counts = tasks_per_node(spec)
            return str(counts[int(environ.get("SLURM_NODEID", "0"))])
        except (ValueError, IndexError):
            pass  # an unknown format: --ntasks-per-node, else the caller's own fallback
    return environ.get("SLURM_NTASKS_PER_NODE") or None


def derive_master_port(job_id: str) -> str:
    """The same port in every task of the job, without talking to each other."""
    return str(_PORT_BASE + int(job_id) % _PORT_SPAN)


def launch_env(environ: Mapping[str, str]) -> dict[str, str]:
    """The launch variables an srun step implies that ``environ`` does not set yet ({} outside a step, or
    where a launcher already set RANK or WORLD_SIZE)."""
    if "RANK" in environ or "WORLD_SIZE" in environ or not in_srun_step(environ):
        return {}
    derived = {
        "RANK": environ["SLURM_PROCID"],
        "WORLD_SIZE": environ.get("SLURM_STEP_NUM_TASKS") or environ["SLURM_NTASKS"],
        "LOCAL_RANK": environ.get("SLURM_LOCALID", "0"),
    }
    local_world = _local_world(environ)
    if local_world:
        derived["LOCAL_WORLD_SIZE"] = local_world
    # Rank 0 runs on the step's first node (block and cyclic distributions both start there).
    nodes = (
        environ.get("SLURM_STEP_NODELIST")
        or environ.get("SLURM_JOB_NODELIST")
        or environ.get("SLURM_NODELIST")
    )
    if nodes:
        derived["MASTER_ADDR"] = first_host(nodes)
    job_id = environ.get("SLURM_JOB_ID") or environ.get("SLURM_JOBID")
    if job_id and job_id.isdigit():
        derived["MASTER_PORT"] = derive_master_port(job_id)
    return {k: v for k, v in derived.items() if k not in environ}
