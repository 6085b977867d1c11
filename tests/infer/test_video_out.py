"""``--out``'s extension picks the container: each one written by ``VideoWriter`` decodes with PyAV to the
expected codec, frame count, size and (within the codec's loss) pixels; anything else is one clear error."""

from __future__ import annotations

from fractions import Fraction

import av
import numpy as np
import pytest
import torch

from megavg.infer.video_io import VideoWriter, check_output
from megavg.utils.errors import UserError

# extension -> (codec PyAV reports, mean absolute error allowed in [0, 255] units)
EXPECTED = {"mp4": ("h264", 6.0), "webm": ("vp9", 6.0), "gif": ("gif", 24.0)}  # gif: 3-3-2 bit palette


def moving_gradient(frames: int, height: int, width: int) -> torch.Tensor:
    """1,3,T,H,W in [-1, 1]: smooth colour ramps that shift by 2 pixels per frame."""
    t = torch.arange(frames).view(-1, 1, 1)
    y, x = torch.arange(height).view(1, -1, 1), torch.arange(width).view(1, 1, -1)
    r = ((x + 2 * t) % width) / width
    g = y / height
    b = ((x + y + 2 * t) % (width + height)) / (width + height)
    return (torch.stack(torch.broadcast_tensors(r, g, b)) * 2 - 1).unsqueeze(0).float()  # 1, 3, T, H, W


@pytest.mark.parametrize("ext", sorted(EXPECTED))
@pytest.mark.parametrize("size", [(32, 48), (33, 47)])
def test_container_by_extension(tmp_path, ext, size):
    video = moving_gradient(9, *size)
    path = tmp_path / f"v.{ext}"
    with VideoWriter(path, Fraction(16)) as writer:
        writer.write(video[:, :, :5])
        writer.write(video[:, :, 5:])
    with av.open(str(path)) as container:
        stream = container.streams.video[0]
        codec = stream.codec_context.name
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    expected = ((video[0].permute(1, 2, 3, 0) + 1) * 127.5).round().numpy()  # T, H, W, 3
    assert codec == EXPECTED[ext][0]
    assert frames.shape == (9, *size, 3)
    assert np.abs(frames.astype(np.float64) - expected).mean() < EXPECTED[ext][1]
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no temporary left behind


@pytest.mark.parametrize("name", ["x.avi", "x.MOV", "x", "x.gif.tmp"])
def test_unsupported_extension_is_one_error(tmp_path, name):
    with pytest.raises(UserError, match=r"unsupported video extension .*\.mp4, \.webm, \.gif"):
        check_output(tmp_path / name)
    with pytest.raises(UserError):
        VideoWriter(tmp_path / name, Fraction(16))
    assert not list(tmp_path.iterdir())
