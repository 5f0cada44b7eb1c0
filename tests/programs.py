"""Helpers that read what a network or a compiled program is made of (tests and benchmarks)."""

from __future__ import annotations

import re

import jax


def count_params(params) -> int:
    """Total number of scalars in a parameter pytree."""
    return int(sum(leaf.size for leaf in jax.tree_util.tree_leaves(params)))


_HEAVY_HLO = re.compile(r"=\s*\(?(\w+)\[[^=]*\b(?:convolution|dot)\(|=\s*\(?(\w+)\[.*custom_call_target=\"__(?:cudnn\$conv|cublas)")
_HEAVY_STABLEHLO = re.compile(r"stablehlo\.(?:convolution|dot_general).*->\s*tensor<[\dx]*x(\w+)>")


def compute_dtypes(program_text: str) -> list[str]:
    """The result element type of every convolution and matrix product in a program's text.

    Reads ``jax.jit(f).lower(...).as_text()`` (StableHLO: what XLA is asked to compute) or
    ``.compile().as_text()`` (HLO: what the backend runs, cuDNN convolutions and cuBLAS
    products included). XLA on CPU, for example, turns bf16 products into f32 ones.
    """
    found = []
    for line in program_text.splitlines():
        match = _HEAVY_STABLEHLO.search(line) or _HEAVY_HLO.search(line)
        if match:
            found.append(next(g for g in match.groups() if g))
    return found


class Compiles:
    """Counts XLA compilations by function name while in a ``with`` block, through JAX's
    public monitoring events (one ``backend_compile`` event per program compiled)."""

    EVENT = "/jax/core/compile/backend_compile_duration"

    def __init__(self):
        self.names: list[str] = []

    def _listen(self, event: str, duration: float, **kwargs) -> None:
        if event == self.EVENT:
            self.names.append(str(kwargs.get("fun_name", "")))

    def __enter__(self) -> Compiles:
        import jax.monitoring

        jax.monitoring.register_event_duration_secs_listener(self._listen)
        return self

    def __exit__(self, *exc) -> None:
        import jax.monitoring

        jax.monitoring.unregister_event_duration_listener(self._listen)

    def of(self, name: str) -> int:
        """Compilations of the jitted function named ``name`` (its Python name)."""
        return sum(1 for n in self.names if n == f"jit({name})")


def add(memory, states, q_values, actions, rewards, end_life, end_episode, reward_clip=1.0):
    """Write one whole time step of all games into the memory: the acting step's two halves."""
    from dqn_jax.core import replay

    memory = replay.record_decision(memory, states, q_values, actions)
    return replay.record_outcome(memory, rewards, end_life, end_episode, reward_clip)


add_jit = jax.jit(add, donate_argnums=0)
