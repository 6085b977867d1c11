"""The standalone DC-AE-V runner: streamed pairs equal the full-clip reconstruction; the CLI writes a
playable MP4 of the right length; the damaged videos of tests/data/corpus.py give one line, exit 2, no
output; its unusual ones keep frame count, displayed size and orientation, odd sizes and timestamps."""

import subprocess
import sys
from fractions import Fraction

import av
import pytest
import torch

import megavg.models
from megavg.data.samples import real_clips
from megavg.infer import reconstruct
from megavg.infer.reconstruct import reconstruct_stream
from megavg.infer.video_io import read_pieces
from megavg.utils.errors import run_cli
from tests.data.corpus import video_corpus


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("model") / "dcaev"
    megavg.models.build("dc-ae-v-tiny").save(folder)
    return folder


def test_streamed_pairs_equal_full_reconstruction(tiny_folder):
    model = megavg.models.load(tiny_folder).eval()
    clip = torch.rand(1, 3, 21, 36, 44) * 2 - 1  # 21 frames: two whole chunks of 8 and a ragged tail
    pieces = [clip[:, :, i : i + 5] for i in range(0, 21, 5)]
    pairs = list(reconstruct_stream(model, iter(pieces)))
    inputs = torch.cat([p[0] for p in pairs], dim=2)
    outputs = torch.cat([p[1] for p in pairs], dim=2)
    with torch.no_grad():
        reference = model(clip)
    assert torch.equal(inputs, clip)
    torch.testing.assert_close(outputs, reference, rtol=1e-5, atol=1e-5)


def test_cli_writes_complete_video(tiny_folder, tmp_path):
    clip = next(p for p in real_clips() if p.name == "carphone_pristine.mp4")  # 176x144: quick on CPU
    out = tmp_path / "rec.mp4"
    cmd = [sys.executable, "-m", "megavg.infer.reconstruct", str(clip), "--model", str(tiny_folder)]
    proc = subprocess.run([*cmd, "--out", str(out), "--frames", "10"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "PSNR" in proc.stderr
    source = next(read_pieces(clip, 1))
    with av.open(str(out)) as container:
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]
    assert len(frames) == 10
    assert frames[0].shape[:2] == tuple(source.shape[-2:])


@pytest.mark.parametrize("bad", ["missing.mp4", "empty.mp4"])
def test_cli_bad_input_one_line_no_output(tiny_folder, tmp_path, bad):
    (tmp_path / "empty.mp4").write_bytes(b"")
    out = tmp_path / "rec.mp4"
    cmd = [sys.executable, "-m", "megavg.infer.reconstruct", str(tmp_path / bad), "--model", str(tiny_folder)]
    proc = subprocess.run([*cmd, "--out", str(out)], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stderr.strip().count("\n") == 0 and proc.stderr.startswith("error: ")
    assert bad in proc.stderr
    assert not out.exists() and sorted(p.name for p in tmp_path.iterdir()) == ["empty.mp4"]


@pytest.mark.parametrize("frames", ["0", "-3"])
def test_frames_below_one_is_refused(tiny_folder, tmp_path, capsys, frames):
    clip = next(p for p in real_clips() if p.name == "carphone_pristine.mp4")
    out = tmp_path / "rec.mp4"
    assert run_reconstruct([clip, "--model", tiny_folder, "--out", out, "--frames", frames]) == 2
    assert (
        capsys.readouterr().err
        == f"error: --frames: must be >= 1 (or left out for the whole video), got {frames}\n"
    )
    assert not out.exists()


def run_reconstruct(argv) -> int:
    """The CLI in-process (as ``run_cli`` runs it): its exit code, 0 on success."""
    try:
        run_cli(reconstruct.main, [str(a) for a in argv])
    except SystemExit as exit_:
        return exit_.code
    return 0


@pytest.mark.parametrize("name", sorted(video_corpus().bad))
def test_damaged_video_is_one_line_exit_2_nothing_written(tiny_folder, tmp_path, capsys, name):
    bad = video_corpus().bad[name]
    assert run_reconstruct([bad, "--model", tiny_folder, "--out", tmp_path / "rec.mp4"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and str(bad) in err[0], err
    assert not list(tmp_path.iterdir())  # no output, no temporary file


@pytest.mark.parametrize("name", sorted(video_corpus().odd))
def test_unusual_video_keeps_frames_size_orientation_and_timing(tiny_folder, tmp_path, name):
    odd = video_corpus().odd[name]
    out = tmp_path / "rec.mp4"
    assert run_reconstruct([odd.path, "--model", tiny_folder, "--out", out]) == 0
    with av.open(str(out)) as container:
        frames = list(container.decode(video=0))
    assert len(frames) == len(odd.frames)
    assert {(f.height, f.width) for f in frames} == {odd.size}  # displayed size, odd sizes too
    assert {f.rotation for f in frames} == {0}  # written upright, no rotation left to apply
    times = [f.pts * f.time_base for f in frames]
    assert max(abs(t - want) for t, want in zip(times, odd.times)) < Fraction(1, 1000)
