"""Training on several processes and devices with PyTorch's own machinery, in one place.

Data parallel: ``torchrun --nproc_per_node N -m alexnet train ...`` starts N processes; each one calls
:func:`setup`, which joins the process group torchrun describes in its environment (NCCL on CUDA,
gloo on the CPU) and returns a :class:`Context`: this process's rank, the world size, its device, and
the collective operations the training loop needs (gradient averaging is DistributedDataParallel's).
A plain ``alexnet train`` gets a context of one process and no process group.

Model parallel (the paper's layout, section 3.2): :func:`place_columns` puts the two columns of
``alexnet2012_columns`` on two devices; activations cross between them only at conv3 and the fully
connected layers.

Elastic restarts: under ``torchrun --max-restarts K`` a failed group is restarted with
``TORCHELASTIC_RESTART_COUNT`` > 0, and :func:`restarted` tells the training to continue from its last
checkpoint.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Sampler

from ..errors import FlagError, UserError
from ..runtime.device import resolve_device

__all__ = [
    "Context",
    "setup",
    "teardown",
    "restarted",
    "main_process",
    "ShardSampler",
    "place_columns",
    "parse_devices",
]


@dataclass
class Context:
    """Where this process stands: ``rank`` of ``world`` processes, its ``device``; collectives that are
    no-ops for a single process."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")

    @property
    def distributed(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes the run's files and prints the progress."""
        return self.rank == 0

    def sum(self, t: torch.Tensor) -> torch.Tensor:
        """The sum of ``t`` over all processes (``t`` itself for one process)."""
        if not self.distributed:
            return t
        # gloo reduces CPU tensors, NCCL device tensors: move to where the backend works.
        where = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        out = t.to(where).clone()
        dist.all_reduce(out)
        return out.to(t.device)

    @property
    def reduce(self) -> Callable[[torch.Tensor], torch.Tensor] | None:
        """The sum over processes for the loops' counts; None for one process."""
        return self.sum if self.distributed else None

    def join(self, model: nn.Module) -> contextlib.AbstractContextManager:
        """Let processes whose share of an epoch has one batch fewer finish it: DDP's Join shadows their
        missing gradient averages (shares differ by one sample at most)."""
        if isinstance(model, nn.parallel.DistributedDataParallel):
            from torch.distributed.algorithms import Join

            return Join([model])
        return contextlib.nullcontext()

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def broadcast(self, obj: object) -> object:
        """Rank 0's ``obj`` on every process."""
        if not self.distributed:
            return obj
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    def wrap(self, model: nn.Module) -> nn.Module:
        """DistributedDataParallel around ``model`` on several processes; on GPUs its BatchNorm layers
        become SyncBatchNorm (statistics over the global batch). PyTorch's SyncBatchNorm runs on GPUs
        only, so CPU (gloo) processes keep per-process statistics."""
        if not self.distributed:
            return model
        if self.device.type == "cuda":
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def seed(self, seed: int, epoch: int) -> None:
        """Seed every generator for one epoch of one process: augmentation and dropout draws then depend
        only on (seed, epoch, rank), so a run resumed at an epoch boundary repeats them exactly."""
        state = np.random.SeedSequence([seed, epoch, self.rank]).generate_state(2)
        torch.manual_seed(int(state[0]) << 32 | int(state[1]))
        np.random.seed(int(state[0]))


def _env_int(name: str, default: int) -> int:
    try:
        return int(os.environ.get(name, default))
    except ValueError:
        return default


def setup(device_name: str = "auto") -> Context:
    """The context of this process: one process, or a member of the group torchrun started."""
    world = _env_int("WORLD_SIZE", 1)
    if world <= 1:
        return Context(device=resolve_device(device_name))
    rank, local_rank = _env_int("RANK", 0), _env_int("LOCAL_RANK", 0)
    device = resolve_device(device_name)
    if device.type == "cuda":
        # Checked against the node's process count, not this process's local rank: every process of the node
        # then stops with the same message, and rank 0 is the one that prints it.
        local_world = max(_env_int("LOCAL_WORLD_SIZE", local_rank + 1), local_rank + 1)
        if torch.cuda.device_count() < local_world:
            raise UserError(
                f"{local_world} processes on this node but it has {torch.cuda.device_count()} GPU(s): "
                "start at most one process per GPU (torchrun --nproc_per_node)"
            )
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    elif device.type != "cpu":
        raise FlagError(f"data-parallel training runs on CUDA (NCCL) or the CPU (gloo), not {device.type}")
    if not dist.is_initialized():
        # torchrun's store outlives a restart: the keys of the failed attempt (the dead processes'
        # addresses) are still in it, so each attempt rendezvouses under a prefix of its own.
        store, rank, world = next(dist.rendezvous("env://"))
        store = dist.PrefixStore(f"alexnet/attempt{_env_int('TORCHELASTIC_RESTART_COUNT', 0)}", store)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=world)
    return Context(rank=rank, world=world, local_rank=local_rank, device=device)


def teardown() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def main_process() -> bool:
    """Whether this process prints the command's last line and errors: a plain run, or rank 0 of the group
    torchrun started (the processes of a group end the same way, so one says it)."""
    return _env_int("WORLD_SIZE", 1) <= 1 or _env_int("RANK", 0) == 0


def restarted() -> bool:
    """Whether torchrun restarted this group after a failure (then the run continues, it is not new)."""
    return _env_int("TORCHELASTIC_RESTART_COUNT", 0) > 0


class ShardSampler(Sampler[int]):
    """This process's share of one epoch: a permutation of the dataset seeded by (seed, epoch), dealt
    round-robin to the processes, with no padding, so every sample is seen exactly once per epoch.

    With one process it is a seeded shuffle; with N processes and per-process batch B, step k of all
    processes together covers the same N*B samples as step k of one process with batch N*B.
    """

    def __init__(self, size: int, *, rank: int = 0, world: int = 1, seed: int = 0, shuffle: bool = True) -> None:
        self.size, self.rank, self.world, self.seed, self.shuffle = size, rank, world, seed, shuffle
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def _order(self) -> torch.Tensor:
        if not self.shuffle:
            return torch.arange(self.size)
        return torch.randperm(self.size, generator=torch.Generator().manual_seed(self.seed * 100_003 + self.epoch))

    def __iter__(self) -> Iterator[int]:
        return iter(self._order()[self.rank :: self.world].tolist())

    def __len__(self) -> int:
        return len(range(self.rank, self.size, self.world))


def parse_devices(text: str) -> list[torch.device]:
    """``"cuda:0,cuda:1"`` -> two devices that exist here (a clear error for one that does not)."""
    names = [t.strip() for t in text.split(",") if t.strip()]
    if len(names) != 2:
        raise FlagError(f"--model-parallel takes two devices, one per column (e.g. cuda:0,cuda:1), got {text!r}")
    return [resolve_device(n) for n in names]


def place_columns(model: nn.Module, devices: list[torch.device]) -> nn.Module:
    """The paper's two-GPU split: column i of ``alexnet2012_columns`` on ``devices[i]``."""
    from ..models.columns import AlexNetColumns

    if not isinstance(model, AlexNetColumns):
        raise FlagError("--model-parallel splits the paper's two columns: it needs --model alexnet2012 (or _columns)")
    return model.place(*devices)
