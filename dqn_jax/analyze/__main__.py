"""``python -m dqn_jax.analyze RUN_DIR [key=value ...]``: pictures and videos of a finished run."""

import sys

from dqn_jax.analyze.command import main

sys.exit(main())
