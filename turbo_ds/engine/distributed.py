"""Process-group setup shared by ``deepspeed``, ``torchrun`` and plain ``python`` launches.

Rank and world come from the environment (RANK / WORLD_SIZE / LOCAL_RANK, set by both launchers), or,
in a task of an ``srun`` step that sets none of them, from SLURM's variables (``turbo_ds.engine.slurm``);
a plain ``python`` run gets a single-process group on a free local port. The backend is NCCL on CUDA
and gloo on the CPU.
"""

from __future__ import annotations

import contextlib
import os
import socket

import torch

from turbo_ds.engine import slurm


def _env(key: str, default: str) -> str:
    # SLURM's view too: the rank-0-only error line of turbo_ds.cli may come before init_distributed.
    if key in os.environ:
        return os.environ[key]
    return slurm.launch_env(os.environ).get(key, default)


def env_rank() -> int:
    return int(_env("RANK", "0"))


def env_world_size() -> int:
    return int(_env("WORLD_SIZE", "1"))


def env_local_rank() -> int:
    return int(_env("LOCAL_RANK", "0"))


def env_local_world_size() -> int:
    """Ranks on this machine: torchrun's LOCAL_WORLD_SIZE, deepspeed's LOCAL_SIZE, SLURM's; else the world."""
    local = int(_env("LOCAL_WORLD_SIZE", os.environ.get("LOCAL_SIZE", "0")) or 0)
    return local if local > 0 else env_world_size()


def cuda_device_index(local_rank: int, visible: int) -> int:
    """The CUDA device of a rank: its local rank among the GPUs it sees, or device 0 when it sees exactly
    one (a scheduler that gives every task its own GPU: ``srun --gpus-per-task=1``, or a
    CUDA_VISIBLE_DEVICES per rank). Any other shortfall would put two ranks on one GPU: an error."""
    if local_rank < visible:
        return local_rank
    if visible == 1:
        return 0
    raise ValueError(
        f"local rank {local_rank} but this process sees {visible} GPU(s): start at most {visible} "
        "rank(s) per node, or give each rank one GPU (srun --gpus-per-task=1 / CUDA_VISIBLE_DEVICES)"
    )


def free_port() -> int:
    """A TCP port free on this machine now (for a single-process group or a launcher's master)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def init_distributed(timeout_minutes: int = 30) -> tuple[int, int]:
    """Initialise the default process group once (via deepspeed.comm); returns (rank, world_size)."""
    import datetime

    import deepspeed
    import deepspeed.comm as dist
    from deepspeed.accelerator import get_accelerator

    os.environ.update(slurm.launch_env(os.environ))  # torch's env:// init reads them from os.environ
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        os.environ.update({"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0"})
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", str(free_port()))
    os.environ.setdefault("LOCAL_RANK", "0")
    accel = get_accelerator()
    on_cuda = accel.device_name() == "cuda"
    if on_cuda:
        accel.set_device(cuda_device_index(env_local_rank(), torch.cuda.device_count()))
    else:
        # Several CPU ranks on one machine: share the cores instead of oversubscribing them.
        if "OMP_NUM_THREADS" not in os.environ:
            torch.set_num_threads(max(1, (os.cpu_count() or 1) // env_local_world_size()))
    if not torch.distributed.is_initialized():
        backend = "nccl" if on_cuda else "gloo"
        deepspeed.init_distributed(
            dist_backend=backend,
            auto_mpi_discovery=False,
            timeout=datetime.timedelta(minutes=timeout_minutes),
        )
        if not on_cuda and dist.get_world_size() > 1:
            _unlink_shm_allreduce_buffer(dist.get_rank())
    return dist.get_rank(), dist.get_world_size()


def _unlink_shm_allreduce_buffer(rank: int) -> None:
    """DeepSpeed's CPU shared-memory all-reduce (ranks all on one machine) creates a 66 MB
    ``/dev/shm/deepspeed_allreduce_buffer_<uid>_<addr>_<port>_<rank>`` per rank and never unlinks it:
    every run left them behind, in RAM (/dev/shm is a tmpfs), until the machine ran out of memory. Once
    every rank has mapped every other rank's buffer (all did inside init, before the barrier) the names
    can go; the mappings live on until the processes exit, even after a kill -9."""
    name = "_".join(
        ["deepspeed_allreduce_buffer", str(os.getuid()), os.environ.get("MASTER_ADDR", ""),
         os.environ.get("MASTER_PORT", ""), str(rank)]
    )  # fmt: skip
    barrier()  # on every rank, file or not (one rank's stale file must not make it wait alone)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join("/dev/shm", name))


def device() -> torch.device:
    from deepspeed.accelerator import get_accelerator

    accel = get_accelerator()
    if accel.device_name() == "cuda":
        return torch.device("cuda", cuda_device_index(env_local_rank(), torch.cuda.device_count()))
    return torch.device("cpu")


def bf16_supported() -> bool:
    """bf16 only where it is fast: CUDA with native support (the CPU runs fp32)."""
    return torch.cuda.is_available() and torch.cuda.is_bf16_supported()


def barrier() -> None:
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


def destroy(barrier: bool = True, verbose: bool = False) -> bool:
    """Tear the default process group down while the interpreter is fully alive; returns whether there
    was one. Call it once per process at the end of a run, after the last collective.

    ``barrier`` first waits for every rank, so no rank destroys its group while a peer still talks to
    it. Without it (a failing run: a peer may never arrive) only this process's side is torn down. A
    gloo group left for interpreter finalization can abort the process with SIGABRT ("terminate
    called without an active exception"): its worker threads still hold work whose tensors need the
    GIL while the interpreter is going away. Goes through ``deepspeed.comm`` so that DeepSpeed drops
    its cached groups too. ``verbose`` prints a line per rank once the group is gone.
    """
    if not torch.distributed.is_initialized():
        return False
    if barrier and torch.distributed.get_world_size() > 1:
        torch.distributed.barrier()
    try:
        import deepspeed.comm as dist
    except ImportError:
        dist = None
    if dist is not None and dist.is_initialized():
        dist.destroy_process_group()
    if torch.distributed.is_initialized():  # a group deepspeed.comm does not know of
        torch.distributed.destroy_process_group()
    if verbose:
        print(f"[turbo_ds] rank {env_rank()}: process group destroyed", flush=True)
    return True
