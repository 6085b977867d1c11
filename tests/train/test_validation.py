"""Validation videos during training: a tiny T2V LoRA run (adapt_3_lora on the tiny pipeline components)
with ``validation.every: 2`` writes playable MP4s at steps 2 and 4 and tensorboard entries; its training
losses equal a run without validation; a resumed run's step-4 video equals the straight run's; two ZeRO-3
ranks (gloo) give the same video as one."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import torch

from megavg.data import write_latent_shards
from megavg.infer.export import main as export
from megavg.infer.generate import main as generate
from megavg.train.config import load_config
from megavg.train.validation import check, read_prompts
from megavg.utils.errors import UserError
from tests.distributed.launch import REPO, torchrun
from tests.infer.tiny_pipeline import TEXT_DIM, build_components, read_video

PROMPTS = ["a red fox in snow", "a fox"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("valid")
    paths = build_components(root / "components")
    gen = torch.Generator().manual_seed(1)
    samples = [{"latents": torch.randn(4, 2, 4, 4, generator=gen),
                "text": torch.randn(5, TEXT_DIM, generator=gen)} for _ in range(4)]  # fmt: skip
    write_latent_shards(samples, root / "latents", samples_per_shard=2)
    return root, paths


def overrides(root, paths, name, steps=4, validate=True, *extra):
    out = [
        f"run.dir={root / name}", f"data.shards={root / 'latents'}", "data.kind=latent",
        "model.preset=", f"model.init={paths['t2v']}", "parallel.sp_size=1",
        "parallel.deepspeed=configs/deepspeed/zero3_fp32.json", f"schedule.steps={steps}",
        "schedule.warmup_steps=0", "optimizer.lr=0.05", "task.args.rank=4", "task.args.alpha=8",
        "checkpoint.every=2", "model.ema.decay=null",
    ]  # fmt: skip
    if validate:
        out += [
            "validation.every=2", f"validation.prompts={json.dumps(PROMPTS)}", "validation.size=[16, 16]",
            "validation.frames=8", "validation.steps=2", "validation.guidance=3.0", "validation.seed=7",
            f"validation.vae={paths['vae']}", f"validation.text_encoder={paths['text']}",
        ]  # fmt: skip
    return out + list(extra)


def train(args, nproc=1):
    config = ["--config", "configs/train/adapt_3_lora.yaml", *args]
    if nproc > 1:
        return torchrun(REPO / "megavg/train/__main__.py", nproc, REPO, *config, timeout=600)
    proc = subprocess.run([sys.executable, "-m", "megavg.train", *config], cwd=REPO, capture_output=True,
                          text=True, timeout=600)  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr


def losses(run):
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [(m["step"], m["train/loss"]) for m in lines if "train/loss" in m]


def video(run, step, index=0):
    return read_video(run / "validation" / f"step_{step:07d}" / f"{index}.mp4")


def test_validation_videos_and_tensorboard(tiny):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    root, paths = tiny
    train(overrides(root, paths, "straight"))
    run = root / "straight"
    for step in (2, 4):
        for index in range(len(PROMPTS)):
            frames = video(run, step, index)  # decodes with PyAV: a playable H.264 MP4
            assert frames.shape == (8, 16, 16, 3)
    assert not np.array_equal(video(run, 2), video(run, 4))  # the LoRA moved between the validations
    assert not np.array_equal(video(run, 4, 0), video(run, 4, 1))  # the prompt matters
    events = EventAccumulator(str(run / "tensorboard")).Reload()
    assert [e.step for e in events.Images("validation/0")] == [2, 4]
    seconds = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in seconds if "validation/seconds" in m] == [2, 4]
    steps = [m for m in seconds if "train/loss" in m]  # MFU needs a GPU peak: on CPU only TFLOP/s
    assert all(m["perf/tflops_per_gpu"] > 0 and "perf/mfu" not in m for m in steps)


@pytest.mark.slow
def test_training_losses_identical_without_validation(tiny):
    root, paths = tiny
    if not (root / "straight").is_dir():
        train(overrides(root, paths, "straight"))
    train(overrides(root, paths, "plain", 4, False))
    assert losses(root / "straight") == losses(root / "plain") and len(losses(root / "plain")) == 4


@pytest.mark.slow
def test_resumed_run_gives_the_same_video(tiny):
    root, paths = tiny
    if not (root / "straight").is_dir():
        train(overrides(root, paths, "straight"))
    train(overrides(root, paths, "resumed", 2))
    train(overrides(root, paths, "resumed", 4))  # resumes from the step-2 checkpoint
    assert np.array_equal(video(root / "resumed", 4), video(root / "straight", 4))
    assert np.array_equal(video(root / "resumed", 4, 1), video(root / "straight", 4, 1))


@pytest.mark.slow
@pytest.mark.distributed
def test_two_zero3_ranks_give_the_same_video_as_one_and_as_generate(tiny):
    """Same weights in all runs (lr 0: the comparison isolates generation): the two-rank runs sample with
    the parameters partitioned over the ranks and gathered per forward (one of them under Ulysses SP 2),
    the one-rank run with them whole and its components from an exported pipeline. With lr 0 the LoRA
    stays zero, so the model is the init folder's: ``python -m megavg.infer.generate`` on that pipeline
    with the same prompt, seed (validation.seed + index) and settings makes the same video."""
    root, paths = tiny
    pipe = root / "pipeline"
    export(["--transformer", str(paths["t2v"]), "--vae", str(paths["vae"]), "--text-encoder",
            str(paths["text"]), "--dtype", "fp32", "--out", str(pipe)])  # fmt: skip
    still = ["optimizer.lr=0.0", "schedule.steps=2"]
    from_pipe = ["validation.vae=", "validation.text_encoder=", f"validation.pipeline={pipe}"]
    train(overrides(root, paths, "one", 2, True, *still, *from_pipe))
    train(overrides(root, paths, "two", 2, True, *still), nproc=2)
    train(overrides(root, paths, "sp", 2, True, *still, "parallel.sp_size=2"), nproc=2)  # Ulysses SP 2
    for index in range(len(PROMPTS)):
        assert np.array_equal(video(root / "two", 2, index), video(root / "one", 2, index))
        assert np.array_equal(video(root / "sp", 2, index), video(root / "one", 2, index))
    generate([str(pipe), "--prompt", PROMPTS[1], "--seed", "8", "--size", "16", "16", "--frames", "8",
              "--steps", "2", "--guidance", "3.0", "--shift", "5.0", "--dtype", "fp32", "--device", "cpu",
              "--no-progress", "--out", str(root / "generated.mp4")])  # fmt: skip
    assert np.array_equal(read_video(root / "generated.mp4"), video(root / "one", 2, 1))


def test_config_errors(tiny, tmp_path):
    root, paths = tiny
    base = overrides(root, paths, "x")
    (tmp_path / "p.txt").write_text("a fox\n\n  a red fox  \n")
    cfg = load_config(
        REPO / "configs/train/adapt_3_lora.yaml", [*base, f"validation.prompts={tmp_path / 'p.txt'}"]
    )
    assert read_prompts(cfg.validation) == ["a fox", "a red fox"]
    bad = {
        "validation.size=[18, 16]": "multiples of 4",
        "validation.images=[x.png]": "T2V model takes no images",
        "validation.vae=": "set pipeline, or both vae",
        "validation.prompts=[]": "at least one prompt",
        f"validation.prompts={tmp_path / 'none.txt'}": "no such prompt file",
    }
    for override, message in bad.items():
        with pytest.raises(UserError, match=message):
            check(load_config(REPO / "configs/train/adapt_3_lora.yaml", [*base, override]))
