"""The pure JAX core every algorithm shares: what the network sees and how it acts.

* ``networks``: the Q-networks (Flax); ``encodings`` and ``motion``: what a state is
  (the motion trace, a frame stack); ``policy``: epsilon-greedy; ``schedules``: the
  linear control signals; ``replay``: the replay memory's storage; ``acting``: the
  jitted acting step; ``training``: the train state and the optimiser.

May import: ``dqn_jax.core`` only (and JAX, Flax, Optax).
"""
