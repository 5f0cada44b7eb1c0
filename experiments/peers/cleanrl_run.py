"""CleanRL's dqn_atari_jax.py as published in the `cleanrl` 1.2.0 wheel, run unchanged.

    .venv-peers/cleanrl/bin/python experiments/peers/cleanrl_run.py --total-timesteps 30000 ...

Two compatibility lines before it, neither in its loop: `import ale_py` registers the
ALE game ids with Gymnasium (ale-py >= 0.9 does it on import; the script was written for
ale-py 0.8's Gymnasium entry point, whose ROMs needed a download), and `numpy.bool8`, which
Gymnasium 0.29's environment checker still names, is aliased to `numpy.bool_` (NumPy 2
removed it; JAX 0.10 needs NumPy 2).
"""

import runpy
import sys

import ale_py  # noqa: F401
import numpy

if not hasattr(numpy, "bool8"):
    numpy.bool8 = numpy.bool_

sys.argv = ["dqn_atari_jax.py", *sys.argv[1:]]
runpy.run_module("cleanrl.dqn_atari_jax", run_name="__main__", alter_sys=True)
