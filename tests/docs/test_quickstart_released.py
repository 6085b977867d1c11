"""docs/quickstart_released.md runs as written on tiny stand-ins laid out like the release.

The test builds ``DC-VideoGen-Wan2.1-14B/`` from the tiny parts with the release's entries
(``transformer_t2v/``, ``transformer_i2v/``, ``text_encoder/``, ``tokenizer/``, the CLIP ``.pth``,
``scheduler/``), a ``my_clips/`` folder (two real clips with ``.txt`` captions) and ``first.png``, then
runs every shell command of the page in a fresh ``bash`` and its Python block, changing only what makes
them tiny - each substitution must find its text, so a page edit that drops one fails here:

- the DC-AE-V file and ``--arch``: ``dc-ae-v-tiny`` (the file name selects the architecture),
- 704x1280, 80 frames, 50 steps -> 32x32, 8 frames, 2 steps in fp32 on the CPU,
- ``finetune_lora_14b.yaml`` -> ``finetune_lora_tiny.yaml`` (the same task, tiny LoRA, fp32 ZeRO-3),
- ``deepspeed`` gets a free port; the tiny CLIP's heads are 12 wide (a ``sitecustomize`` sets that).

Not run: the download (the folder is built here), the planner (run by test_docs_commands' cheap
commands) and the 8-GPU / SLURM launches (checked there only).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from megavg.data import real_clips
from tests.distributed.launch import free_port
from tests.docs.doc_commands import REPO, commands
from tests.infer.kept_frames import write_sitecustomize, written_frames
from tests.infer.test_released import HEADS, write_release
from tests.infer.tiny_pipeline import CLIP_DIM, build_components, read_video, write_png

PAGE = REPO / "docs/quickstart_released.md"
NOT_RUN = ("hf download", "python -m megavg.plan", "--num_gpus 8", "sbatch")
CPU_RUN = "--dtype fp32 --no-progress"
CAPTIONS = {"bikes.mp4": "a red fox in snow", "carphone_pristine.mp4": "a fox"}


def tiny(text: str) -> str:
    """The page's text with the tiny stand-ins' names and sizes (each substitution must apply)."""
    subs = [
        ("dc-ae-v-f32t4c32-1.0-bf16.pt", "dc-ae-v-tiny-1.0-fp32.pt"),
        ("--arch dc-ae-v-f32t4c32", "--arch dc-ae-v-tiny"),
        ("--size 704 1280 --frames 80 --steps 50", f"--size 32 32 --frames 8 --steps 2 {CPU_RUN}"),
        ("--frames 80 --size 704 1280", "--frames 8 --size 32 32 --device cpu"),
        ("configs/train/finetune_lora_14b.yaml", "configs/train/finetune_lora_tiny.yaml"),
        ("deepspeed --num_gpus 1", f"deepspeed --num_gpus 1 --master_port {free_port()}"),
        ('device="cuda", dtype="bf16"', 'device="cpu", dtype="fp32"'),
        ("size=(704, 1280), frames=80, steps=50", "size=(32, 32), frames=8, steps=2"),
    ]  # fmt: skip
    for old, new in subs:
        assert old in text, f"docs/quickstart_released.md no longer says {old!r}"
        text = text.replace(old, new)
    return text


def python_block(text: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", text, flags=re.S)
    assert len(blocks) == 1, "one Python block"
    return blocks[0]


@pytest.fixture
def workdir(tmp_path):
    """A checkout-like folder holding the release stand-in, the user's clips and first.png."""
    for name in ("tools", "tests", "configs", "megavg", "launchers"):
        (tmp_path / name).symlink_to(REPO / name)
    write_release(tmp_path / "DC-VideoGen-Wan2.1-14B", build_components(tmp_path / "parts"))
    (tmp_path / "my_clips").mkdir()
    for clip in real_clips():
        if clip.name in CAPTIONS:
            shutil.copy(clip, tmp_path / "my_clips" / clip.name)
            (tmp_path / "my_clips" / clip.name).with_suffix(".txt").write_text(CAPTIONS[clip.name])
    write_png(tmp_path / "first.png", 28, 36)
    tiny_clip = f"import megavg.infer.clip_weights as cw\ncw.HEAD_DIM = {CLIP_DIM // HEADS}  # tiny CLIP\n"
    write_sitecustomize(tmp_path / "site", tiny_clip)  # and every video keeps its frames (kept_frames.py)
    return tmp_path


def run(cmd: list[str], cwd) -> str:
    env = {"PATH": f"{os.path.dirname(sys.executable)}:/usr/bin:/bin", "HOME": str(cwd),
           "PYTHONPATH": f"{cwd / 'site'}:{REPO}", "OMP_NUM_THREADS": "1", "DS_ACCELERATOR": "cpu",
           "HF_HUB_OFFLINE": "1"}  # fmt: skip
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{' '.join(cmd)[:300]}\n{proc.stdout[-1500:]}\n{proc.stderr[-3000:]}"
    return proc.stdout + proc.stderr


@pytest.mark.slow
@pytest.mark.distributed
def test_quickstart_released_runs_on_tiny_standins(workdir):
    text = tiny(PAGE.read_text())
    cmds = [c.text for c in commands(text, PAGE.name) if not any(s in c.text for s in NOT_RUN)]
    first = [c for c in cmds if "DC-VideoGen-Wan2.1-14B --prompt" in c]
    assert len(first) == 2  # T2V and I2V straight from the released folder
    for cmd in first:
        run(["bash", "-e", "-c", cmd], workdir)
    t2v, i2v = read_video(workdir / "t2v.mp4"), read_video(workdir / "i2v.mp4")
    assert t2v.shape == (8, 32, 32, 3) and i2v.shape == (8, 28, 36, 3)  # I2V: the 28x36 image's aspect
    cli_frames = written_frames(workdir / "t2v.mp4")
    assert cli_frames.shape == (8, 32, 32, 3)

    run([sys.executable, "-c", python_block(text)], workdir)  # the same arguments from Python
    np.testing.assert_array_equal(written_frames(workdir / "t2v.mp4"), cli_frames)
    assert read_video(workdir / "i2v.mp4").shape == (8, 28, 36, 3)

    rest = [c for c in cmds if c not in first]
    assert any(c.startswith("deepspeed") for c in rest) and rest[-1].startswith(
        "python -m megavg.infer.generate"
    )
    for cmd in rest:
        run(["bash", "-e", "-c", cmd], workdir)
    assert len(list((workdir / "data/my_latents").glob("part-*/*.tar"))) == 2  # one shard per clip
    assert (workdir / "runs/my_lora/checkpoints/latest").is_file()
    assert read_video(workdir / "mine.mp4").shape == (8, 32, 32, 3)
