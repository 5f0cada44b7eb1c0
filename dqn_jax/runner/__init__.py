"""Running an algorithm: the training loop (one acting loop for every algorithm), test
mode, checkpoints and resume, stop signals, numerical faults, resources and the logs.

* ``loop``: the training loop; ``games``: one step of N games; ``testing``: test mode;
* ``checkpoints``, ``resume``: Orbax checkpoints, and the logs cut back to one;
* ``interrupts``: Ctrl-C, SIGTERM and the grace period; ``faults``: divergence;
* ``resources``: will the run fit; ``logs``: the CSV logs and the console (no drawing).

May import: ``dqn_jax.algorithms``, ``dqn_jax.tracking``, ``dqn_jax.core``,
``dqn_jax.envs``, ``dqn_jax.config``; never the sweeps, the analysis or the application.
"""
