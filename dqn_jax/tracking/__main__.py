"""``python -m dqn_jax.tracking import RUN_DIR``: send what a tracking-store outage kept."""

import sys

from dqn_jax.tracking.journal import main

sys.exit(main())
