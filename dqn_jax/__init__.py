"""dqn_jax: the Hvass Laboratories Q-learning tutorial for Atari, in JAX, as a Hydra application."""

__version__ = "0.1.0"
