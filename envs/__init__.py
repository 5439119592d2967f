"""Environments: Meta-World MT50 image envs, scripted demonstrations, goal images.

MUJOCO_GL defaults to EGL (headless, Mesa software rendering on CPU-only machines); it must be set before the
first `import mujoco`, which is why it is set here.
"""

import os

os.environ.setdefault("MUJOCO_GL", "egl")

# Mesa's software renderer (llvmpipe) and Triton each bring their own LLVM. If Triton is first imported after a
# frame was rendered, the process dies with a segmentation fault; torch imports Triton lazily (at the first
# optimizer or torch.compile), so a script that renders and then trains in one process would crash. Importing
# it here, before anything renders, makes the order safe.
try:
    import torch._dynamo  # noqa: F401,E402
except Exception:  # pragma: no cover - a torch without dynamo/triton has nothing to clash
    pass

# gymnasium.make("foresight/MetaWorld-v0", task=...): registration imports only gymnasium (MuJoCo loads at make).
from envs import registration as _registration  # noqa: E402,F401
