"""A clean interpreter exit after ``backward()`` on an emulated device.

On a CPU-only machine, backward passes run on the calling thread. Once an emulated CUDA device
exists, autograd runs them on a per-device worker thread, as on a GPU, and that exposes a race
in torch 2.13 (pytorch/pytorch#180701): ``torch.autograd.backward`` stashes a
``contextvars.Context`` in C++ thread-local state, the worker's copy of the graph task can hold
the last reference to it, and when the worker drops it the worker takes the GIL. If the main
thread is already finalising the interpreter, CPython ends the worker with ``pthread_exit`` from
inside a ``noexcept`` destructor, and the process aborts with "terminate called without an active
exception" (exit status 134) after the script itself succeeded.

:func:`drain_autograd_device_threads` runs one tiny backward pass per emulated device through the
engine directly (without the stashed context). A worker picks up a new task only after releasing
its previous graph task, so once these passes return no worker holds a Python object any more.
:func:`install` does that at exit.
"""

from __future__ import annotations

import atexit
from typing import Sequence

from torchdevice.core.logger import logger

_installed = False


def drain_autograd_device_threads(device_types: Sequence[str], device_count: int) -> None:
    """Make every autograd device worker finish with (and release) its last graph task."""
    import torch

    engine = torch.autograd.Variable._execution_engine
    with torch.enable_grad():
        for device_type in device_types:
            for index in range(device_count):
                device = torch.device(device_type, index)
                leaf = torch.zeros((), device=device, requires_grad=True)
                # Called on the engine, not through torch.autograd.backward, which would stash a
                # new context in thread-local state and recreate the hazard being removed; and
                # accumulating into the leaf rather than returning gradients, so the graph task
                # holds no tensor that Python also references (dropping one takes the GIL too).
                engine.run_backward(
                    (leaf * 1,), (torch.ones((), device=device),), False, False, (), True, True
                )


def _drain_at_exit(device_types: tuple[str, ...], device_count: int) -> None:
    import torch

    # A program that never used cuda has no worker to drain, and must not initialize CUDA now
    # (in a forked child of an initialized parent that would raise).
    device_types = tuple(t for t in device_types if t != "cuda" or torch.cuda.is_initialized())
    if not device_types:
        return
    try:
        drain_autograd_device_threads(device_types, device_count)
    except Exception:  # noqa: BLE001 - exit must go on; a failure here only loses the safeguard
        logger.debug("could not drain autograd device threads at exit", exc_info=True)


def install(device_types: Sequence[str], device_count: int) -> bool:
    """Drain the autograd device workers at interpreter exit (once per process).

    Returns False if it was installed already. Install it before user code registers its own
    exit handlers: atexit runs handlers last-in first-out, so this one then runs after them.
    """
    global _installed
    if _installed or device_count <= 0 or not device_types:
        return False
    atexit.register(_drain_at_exit, tuple(device_types), device_count)
    _installed = True
    return True
