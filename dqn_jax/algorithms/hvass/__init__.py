"""The tutorial's method (``algorithm=hvass``): the backward sweep over the replay memory
(``targets``), error-split batches (``sampling``), epochs until the loss limit
(``optimise``), and the algorithm itself (``algorithm``).

May import: ``dqn_jax.algorithms.base``, ``dqn_jax.core`` and ``dqn_jax.config``.
"""
