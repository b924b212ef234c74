"""The benchmark's baseline: torchvision's AlexNet the plain way (eager fp32, NCHW, ``torch.optim.SGD``),
timed in this process (:class:`Baseline`) or in a fresh one of its own (:class:`BaselineProcess`)."""

from __future__ import annotations

import functools
import multiprocessing
import statistics
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F

from ..runtime.machine import time_call

__all__ = ["Timer", "median_seconds", "Baseline", "BaselineProcess"]

Timer = Callable[[Callable[[], Any]], float]  # seconds per call of a function of no arguments


def median_seconds(fn: Callable[[], Any], device: torch.device, **timing: Any) -> float:
    """The default :data:`Timer`: median seconds of :func:`~alexnet.runtime.machine.time_call`."""
    return statistics.median(time_call(fn, device, **timing))


def _infer(net: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return net(x)


def _train_step(net: torch.nn.Module, optimizer: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor) -> None:
    loss = F.cross_entropy(net(x), y)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()


class Baseline:
    """torchvision's AlexNet in eager fp32, NCHW, trained with ``torch.optim.SGD``, timed in this process.

    :meth:`measure` times it at a phase and batch size and keeps the seconds (in ``seconds``), so that
    the baseline's own rows can report every measurement of the run.
    """

    def __init__(self, device: torch.device, timer: Timer) -> None:
        self.device, self.timer = device, timer
        self.seconds: dict[tuple[str, int], list[float]] = {}
        self._nets: dict[str, torch.nn.Module] = {}  # one per phase, in eval or train mode for good
        self._calls: dict[tuple[str, int], Callable[[], Any]] = {}

    def call(self, phase: str, batch: int) -> Callable[[], Any]:
        """The call to time, built (and run once) on first use."""
        if phase not in ("inference", "train"):
            raise ValueError(f"the baseline has no phase {phase!r}: inference or train")
        if (phase, batch) not in self._calls:
            import torchvision

            if phase not in self._nets:
                self._nets[phase] = torchvision.models.alexnet(weights=None).to(self.device).train(phase == "train")
            net, x = self._nets[phase], torch.randn(batch, 3, 224, 224, device=self.device)
            if phase == "inference":
                fn = functools.partial(_infer, net, x)
            else:
                optimizer = torch.optim.SGD(net.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
                y = torch.randint(0, 1000, (batch,), device=self.device)
                fn = functools.partial(_train_step, net, optimizer, x, y)
            fn()
            self._calls[phase, batch] = fn
        return self._calls[phase, batch]

    def measure(self, phase: str, batch: int) -> float:
        """Seconds per batch, measured now (and kept)."""
        seconds = self.timer(self.call(phase, batch))
        self.seconds.setdefault((phase, batch), []).append(seconds)
        return seconds

    def close(self) -> None:
        self._nets.clear()
        self._calls.clear()

    def __enter__(self) -> Baseline:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class BaselineProcess:
    """A :class:`Baseline` in a fresh process of its own: what a default PyTorch process gets, after this
    one tuned its allocator for our modes (a process-wide setting that cannot be undone)."""

    def __init__(self, device: torch.device, timing: dict[str, Any]) -> None:
        self.seconds: dict[tuple[str, int], list[float]] = {}
        context = multiprocessing.get_context("spawn")  # a fork would inherit the allocator settings and threads
        self._conn, child = context.Pipe()
        args = (child, str(device), torch.get_num_threads(), timing)
        self._process = context.Process(target=_serve_baseline, args=args, daemon=True)
        self._process.start()
        child.close()
        self._receive()  # it has imported torch, so it no longer competes with this process for the CPU

    def measure(self, phase: str, batch: int) -> float:
        """Seconds per batch, measured now in the other process (and kept here)."""
        self._conn.send((phase, batch))
        seconds = self._receive()
        self.seconds.setdefault((phase, batch), []).append(seconds)
        return seconds

    def _receive(self) -> Any:
        try:
            return self._conn.recv()
        except EOFError:
            raise RuntimeError("the baseline process stopped; its error is printed above") from None

    def close(self) -> None:
        try:
            self._conn.send(None)
        except OSError:
            pass  # it has stopped already
        self._process.join(timeout=60)
        if self._process.is_alive():
            self._process.terminate()
        self._conn.close()

    def __enter__(self) -> BaselineProcess:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _serve_baseline(conn: Any, device: str, threads: int, timing: dict[str, Any]) -> None:
    """The baseline process: answer each (phase, batch) with the seconds of one measurement."""
    torch.set_num_threads(threads)
    here = torch.device(device)
    baseline = Baseline(here, functools.partial(median_seconds, device=here, **timing))
    conn.send("ready")
    while (request := conn.recv()) is not None:
        conn.send(baseline.measure(*request))
