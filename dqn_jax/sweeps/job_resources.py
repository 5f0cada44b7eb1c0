"""Each job of a parallel sweep on one machine gets its share of the cores and of the GPU.

:class:`JobResources` is added by ``hydra/launcher=local_parallel`` (as
``dqn_jax.sweeps.JobResources``, re-exported there).
"""

from __future__ import annotations

import fcntl
import logging
import os
from pathlib import Path
from typing import Any

from hydra.experimental.callback import Callback
from omegaconf import DictConfig

from dqn_jax import tracking
from dqn_jax.sweeps.jobs import is_multirun
from dqn_jax.tracking import store

log = logging.getLogger("dqn_jax.sweeps")


class JobResources(Callback):
    """Each job of a parallel sweep on one machine gets a share of the cores and the GPU.

    In the job's process, before the task (and so before JAX starts), it sets
    ``XLA_PYTHON_CLIENT_PREALLOCATE=false`` and ``XLA_PYTHON_CLIENT_MEM_FRACTION`` to
    ``gpu_memory / n_jobs`` unless they are already set (``hydra.job.env_set`` or the
    environment win), and pins the worker process to its slot's cores, so that the
    games' threads (ale-py) and XLA's CPU threads of the jobs do not compete. A worker
    keeps its slot (a lock file in the sweep directory) for its lifetime.
    """

    def __init__(self, n_jobs: int = 1, gpu_memory: float = 0.9, pin_cpus: bool = True) -> None:
        self.n_jobs = int(n_jobs) if int(n_jobs) > 0 else (os.cpu_count() or 1)
        self.gpu_memory = float(gpu_memory)
        self.pin_cpus = bool(pin_cpus)

    def on_job_start(self, config: DictConfig, **kwargs: Any) -> None:
        self.seen = {}
        if not is_multirun(config.hydra):
            return
        os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
        os.environ.setdefault("XLA_PYTHON_CLIENT_MEM_FRACTION", f"{self.gpu_memory / self.n_jobs:.3f}")
        if self.pin_cpus and hasattr(os, "sched_setaffinity"):
            _pin_to_slot(Path(str(config.hydra.sweep.dir)), self.n_jobs)
        # what the task sees (hydra.job.env_set is undone when the task returns)
        self.seen = {"dqn_jax.cpus": ",".join(map(str, sorted(os.sched_getaffinity(0)))),
                     "dqn_jax.xla_preallocate": os.environ["XLA_PYTHON_CLIENT_PREALLOCATE"],
                     "dqn_jax.xla_mem_fraction": os.environ["XLA_PYTHON_CLIENT_MEM_FRACTION"]}

    def on_job_end(self, config: DictConfig, job_return: Any, **kwargs: Any) -> None:
        if not getattr(self, "seen", None) or config.logger.name == "none":
            return
        try:
            client = store.client(config)
            run_id = tracking.read_run_id(config.hydra.runtime.output_dir)
            if run_id:
                for key, value in self.seen.items():
                    client.set_tag(run_id, key, value)
        except Exception as exc:
            log.warning("MLflow: could not tag job %s with its resources: %s",
                        config.hydra.job.num, exc)


_SLOT: dict[str, Any] = {}  # this process's slot: its lock file stays open while it lives


def _pin_to_slot(sweep_dir: Path, n_jobs: int) -> None:
    """Claim a free slot (0..n_jobs-1) for this process and pin it to that slot's cores."""
    if _SLOT:
        return
    cpus = sorted(os.sched_getaffinity(0))
    slots = sweep_dir / ".slots"
    slots.mkdir(parents=True, exist_ok=True)
    for slot in range(n_jobs):
        handle = open(slots / f"{slot}.lock", "w")  # noqa: SIM115 - held for the process's life
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.close()
            continue
        share = _slot_cpus(cpus, slot, n_jobs)
        os.sched_setaffinity(0, share)
        _SLOT.update(slot=slot, cpus=share, handle=handle)
        return
    log.warning("no free CPU slot among %d for this job; it runs unpinned", n_jobs)


def _slot_cpus(cpus: list[int], slot: int, n_jobs: int) -> list[int]:
    """Slot ``slot``'s cores: a contiguous share, or one core shared when jobs outnumber cores."""
    if n_jobs >= len(cpus):
        return [cpus[slot % len(cpus)]]
    per, extra = divmod(len(cpus), n_jobs)
    start = slot * per + min(slot, extra)
    return cpus[start:start + per + (1 if slot < extra else 0)]
