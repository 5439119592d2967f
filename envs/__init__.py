"""Environments: Meta-World MT50 image envs, scripted demonstrations, goal images.

MUJOCO_GL defaults to EGL (headless, Mesa software rendering on CPU-only machines); it must be set before the
first `import mujoco`, which is why it is set here.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")
