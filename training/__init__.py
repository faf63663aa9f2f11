"""FACET-VLM training, evaluation, Trainer glue, publishing and the `facet-vlm` command line."""

import os


# Idle OpenMP threads spin by default; on a 2-core machine whose other core is busy (rendering, another job) that
# spinning made training steps 3-9x slower here. It only takes effect when set before torch is first imported.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
