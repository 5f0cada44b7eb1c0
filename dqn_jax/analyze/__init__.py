"""Looking at runs: ``python -m dqn_jax.analyze`` and the pictures every run logs.

* ``saved_run``: a finished run found again (directory, config, MLflow run, checkpoint);
* ``probe``: what the agent sees and values, from a checkpoint; ``pictures``: drawing;
* ``video``: test-mode videos.

May import: ``dqn_jax.runner`` and everything below it; never the sweeps or the application.
"""
