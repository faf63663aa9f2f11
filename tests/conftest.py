"""Test-session environment: headless OpenGL for the pyrender backend, passive OpenMP waiting (spinning idle threads
slow a 2-core machine several-fold once two processes compete), and an offline, throw-away HF cache."""

import os
import tempfile


os.environ.setdefault("PYOPENGL_PLATFORM", "egl")
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HOME", tempfile.mkdtemp(prefix="facet-hf-home-"))
