"""Multi-process generation under torchrun (gloo, CPU) gives the single-process video.

``--sp 2`` (Ulysses) and ``--cfg-parallel`` on two ranks: latents within 1e-5 relative of one process,
the uint8 frames handed to the MP4 encoder within 1 (the lossy H.264 encoding itself may amplify a
one-level difference, so the MP4s are compared only in shape), only rank 0 writes ``--out``, every rank
exits 0,
and under SP each rank's DiT blocks see half of the tokens. The decode is split by latent chunks over
the ranks, so this also checks the split decode with its left context.
"""

from __future__ import annotations

import pytest
import torch

from megavg.infer import generate, stages
from megavg.infer.export import main as export
from megavg.infer.video_io import VideoWriter
from tests.distributed.generate_worker import record_pixels
from tests.distributed.launch import REPO, torchrun
from tests.infer.tiny_pipeline import read_video

WORKER = REPO / "tests/distributed/generate_worker.py"
# 24 frames -> 6 latent frames (3 decoder chunks of the tiny DC-AE-V) of 8x12: 576 tokens (patch 1)
RUN = ["--prompt", "a red fox in snow", "--dtype", "fp32", "--steps", "3", "--no-progress", "--size", "32",
       "48", "--frames", "24", "--device", "cpu", "--seed", "3"]  # fmt: skip


@pytest.fixture(scope="module")
def single(tmp_path_factory, tiny_parts):
    """(pipeline folder, single-process result, its video frames)."""
    root = tmp_path_factory.mktemp("gen_parallel")
    common = ["--vae", str(tiny_parts["vae"]), "--text-encoder", str(tiny_parts["text"]), "--dtype", "fp32"]
    export(["--transformer", str(tiny_parts["t2v"]), *common, "--out", str(root / "t2v")])
    seen: list[int] = []
    real = stages.denoise

    def recording(models, *args):
        models.dit.blocks[0].register_forward_pre_hook(lambda _m, a: seen.append(a[0].shape[1]))
        return real(models, *args)

    stages.denoise, write, pixels = recording, VideoWriter.write, []
    record_pixels(pixels)
    try:
        result = generate.main([str(root / "t2v"), *RUN, "--out", str(root / "one.mp4")])
    finally:
        stages.denoise, VideoWriter.write = real, write
    return root / "t2v", result, seen, torch.cat(pixels, dim=1)


@pytest.mark.distributed
@pytest.mark.parametrize(
    "flags",
    [["--sp", "2"], pytest.param(["--cfg-parallel"], marks=pytest.mark.slow)],  # slow: suite budget
    ids=["sp2", "cfg-parallel"],
)
def test_two_processes_give_the_single_process_video(single, tmp_path, flags):
    pipe, reference, tokens, frames = single
    out = tmp_path / "out"
    out.mkdir()
    torchrun(WORKER, 2, out, str(pipe), *RUN, "--out", str(out / "video.mp4"), *flags, timeout=600)
    assert sorted(p.name for p in out.iterdir()) == ["rank0.pt", "rank1.pt", "video.mp4"]
    ranks = [torch.load(out / f"rank{r}.pt") for r in range(2)]
    scale = reference["latents"].abs().max()
    for got in ranks:
        assert (got["latents"] - reference["latents"]).abs().max() <= 1e-5 * scale
    assert ranks[0]["frames"] == reference["frames"] == 24  # rank 0 writes; the others only decode
    pixels = torch.cat(ranks[0]["pixels"], dim=1)  # 3, frames, H, W
    assert pixels.shape == frames.shape == (3, 24, 32, 48)
    assert (pixels.int() - frames.int()).abs().max() <= 1
    assert read_video(out / "video.mp4").shape == (24, 32, 48, 3)
    if flags[0] == "--sp":  # every DiT call of each rank holds half of the 576 tokens
        assert set(tokens) == {576} and all(set(r["tokens"]) == {288} for r in ranks)
        assert len(ranks[0]["tokens"]) == len(tokens)
    else:  # CFG-parallel: the whole sequence, one branch (batch 1) per rank instead of a batch of 2
        assert all(set(r["tokens"]) == {576} for r in ranks)


def test_wrong_process_count_is_one_error_line(single, tmp_path):
    pipe = single[0]
    with pytest.raises(generate.UserError, match="needs 2 processes, this run has 1: launch with torchrun"):
        generate.main([str(pipe), *RUN, "--out", str(tmp_path / "x.mp4"), "--sp", "2"])
    assert not (tmp_path / "x.mp4").exists()
