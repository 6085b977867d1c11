"""Evaluation on held-back real clips (one process, a gloo world of one): logged means equal PSNR / SSIM /
LPIPS computed directly on the clips the evaluator reconstructed; the image strip holds the first clip."""

import os

import pytest
import torch
import torch.distributed as dist

from megavg.data.config import DataConfig
from megavg.metrics.perceptual import RANDOM, build_lpips, video_distance
from megavg.metrics.video import psnr, ssim
from megavg.parallel import state
from megavg.tasks.dcaev_eval import EvalArgs, Evaluator
from tests.data.conftest import video_sample, write_video_set
from tests.distributed.launch import free_port


@pytest.fixture
def world_of_one():
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    dist.init_process_group("gloo", rank=0, world_size=1, init_method=f"tcp://127.0.0.1:{free_port()}")
    state.initialize(1)
    yield
    state.shutdown()


class Board:
    def __init__(self):
        self.images = {}

    def add_image(self, name, image, step):
        self.images[(name, step)] = image


class Metrics:
    enabled = True

    def __init__(self):
        self.tb, self.logged = Board(), []

    def log(self, step, scalars):
        self.logged.append((step, scalars))


def test_evaluator_logs_means_of_what_it_reconstructed(world_of_one, tmp_path):
    names = ["carphone_pristine", "carphone_distorted"]
    held = write_video_set(tmp_path / "eval", [video_sample(f"e{i}", names[i % 2]) for i in range(3)])
    data = DataConfig(shards=held, frames=8, chunk=8, size=(32, 32), batch_size=2)
    net = build_lpips(RANDOM)
    evaluator = Evaluator(EvalArgs(shards=held, every=2, clips=3, strip_frames=4), data, 0, net)
    assert evaluator.due(4) and not evaluator.due(3)
    seen = []

    def reconstruct(video):
        seen.append(video.clone())
        return video * 0.8

    metrics = Metrics()
    evaluator.run(reconstruct, 4, metrics, torch.device("cpu"))
    videos = torch.cat(seen)  # 3 clips asked, whole batches of 2 -> 4 clips
    assert videos.shape == (4, 3, 8, 32, 32)
    lpips = torch.stack([video_distance(net, 0.8 * v[None], v[None]) for v in videos]).mean()
    expected = {
        "eval/psnr": psnr(0.8 * videos, videos).mean().item(),
        "eval/ssim": ssim(0.8 * videos, videos).mean().item(),
        "eval/lpips": lpips.item(),
    }
    [(step, scalars)] = metrics.logged
    assert step == 4 and scalars == pytest.approx(expected, rel=1e-5)
    strip = metrics.tb.images[("eval/reconstruction", 4)]
    assert strip.shape == (3, 64, 4 * 32)
    first = (videos[0, :, 0] + 1) / 2  # frame 0 of the first clip, top-left
    torch.testing.assert_close(strip[:, :32, :32], first)
    torch.testing.assert_close(strip[:, 32:, :32], (0.8 * videos[0, :, 0] + 1) / 2)


def test_rfvd_is_the_frechet_distance_of_i3d_features(world_of_one, tmp_path):
    from megavg.eval import frechet_distance
    from megavg.eval.i3d import load_i3d

    names = ["carphone_pristine", "carphone_distorted"]
    held = write_video_set(tmp_path / "eval", [video_sample(f"e{i}", names[i % 2]) for i in range(4)])
    data = DataConfig(shards=held, frames=8, chunk=8, size=(32, 32), batch_size=2)
    args = EvalArgs(shards=held, every=1, clips=4, i3d="random", i3d_size=32)
    evaluator = Evaluator(args, data, 0, None)
    seen = []

    def reconstruct(video):
        seen.append(video.clone())
        return (video * 0.8).flip(-1)

    metrics = Metrics()
    evaluator.run(reconstruct, 1, metrics, torch.device("cpu"))
    videos, i3d = torch.cat(seen), load_i3d("random")  # 32x32 clips: the I3D input size, no resize
    with torch.no_grad():
        real, recon = i3d(videos).double().numpy(), i3d((0.8 * videos).flip(-1)).double().numpy()
    [(_, scalars)] = metrics.logged
    assert scalars["eval/rfvd"] == pytest.approx(frechet_distance(real, recon), rel=1e-6)
    assert scalars["eval/rfvd"] > 0 and "eval/lpips" not in scalars


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"i3d": "missing.pt"}, "eval.i3d: missing.pt not found"),
        ({"i3d": "random", "clips": 1}, "at least 2 clips"),
    ],
)
def test_rfvd_config_errors(kwargs, message):
    from megavg.utils.errors import UserError

    with pytest.raises(UserError, match=message):
        EvalArgs(**kwargs)
