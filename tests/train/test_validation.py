"""Validation videos during training: a tiny T2V LoRA run (adapt_3_lora on the tiny pipeline components)
with ``validation.every: 2`` writes playable MP4s at steps 2 and 4 and tensorboard entries; its training
losses equal a run without validation; a resumed run's step-4 video equals the straight run's; two ZeRO-3
ranks (gloo) give the same video as one."""

from __future__ import annotations

import json
import shutil
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
from tests import collectives
from tests.distributed.launch import REPO, torchrun
from tests.infer.tiny_pipeline import TEXT_DIM, build_components, read_video

PROMPTS = ["a red fox in snow", "a fox"]
RECORDED = REPO / "tests/distributed/recorded.py"


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


def recorded_train(root, name, args, tmp_path_factory, fault, fault_rank=1):
    """Two ranks of ``python -m megavg.train`` with every collective recorded and ``fault`` on one rank
    (tests/distributed/recorded.py); returns (the launch's exit code, its output). The records must be
    the same on both ranks (the comparison names the first difference when a run failed)."""
    records = tmp_path_factory.mktemp(f"collectives_{name}")
    env = {
        collectives.ENV: str(records),
        "MEGAVG_TEST_FAULT": fault,
        "MEGAVG_TEST_FAULT_RANK": str(fault_rank),
    }
    config = ["--config", "configs/train/adapt_3_lora.yaml", *args, "parallel.timeout_minutes=1"]

    def launch():
        with pytest.MonkeyPatch.context() as mp:
            for key, value in env.items():
                mp.setenv(key, value)
            try:
                proc = torchrun(RECORDED, 2, root, "-m", "megavg.train", *config, timeout=600)
                return 0, proc.stdout + proc.stderr
            except AssertionError as err:
                if "failed (75)" in str(err) or "exitcode: 75" in str(err):
                    return 75, str(err)
                raise

    return collectives.checked_run(launch, records, 2)


@pytest.mark.slow
@pytest.mark.distributed
def test_ranks_agree_on_cfg_mode_and_a_finished_run_with_one_failing_read(tiny, tmp_path_factory):
    """Two ZeRO-3 ranks with validation: rank 1 reads too little free memory for batched CFG, rank 0
    plenty. Both must sample the same way (else their parameter gathers differ). Then the finished run is
    relaunched while rank 1 cannot read the checkpoint: rank 0 alone decides that the run is finished, and
    both ranks exit 0 without training (before, rank 1 went on to train alone while rank 0 exited)."""
    root, paths = tiny
    args = overrides(root, paths, "agree_cfg")
    code, _ = recorded_train(root, "cfg", args, tmp_path_factory, "free_memory")
    assert code == 0 and video(root / "agree_cfg", 4).shape == (8, 16, 16, 3)
    before = losses(root / "agree_cfg")
    code, output = recorded_train(root, "finished", args, tmp_path_factory, "read_fail")
    assert code == 0 and "already finished (step 4" in output
    assert losses(root / "agree_cfg") == before  # nothing trained


@pytest.mark.slow
@pytest.mark.distributed
def test_stop_signal_during_validation_saves_and_exits(tiny, tmp_path_factory):
    """SIGUSR1 reaches rank 1 right after its first validation sample at step 2: the ranks agree before
    the next model call, write the step-2 checkpoint and exit 75 (the second prompt's video is not made);
    the relaunch resumes at step 2 and finishes with the straight run's losses."""
    root, paths = tiny
    args = overrides(root, paths, "stopped", 4, True, "checkpoint.every=0")
    code, _ = recorded_train(root, "stop", args, tmp_path_factory, "stop_in_validation")
    run = root / "stopped"
    assert code == 75 and (run / "checkpoints" / "latest").read_text().strip() == "step_00000002"
    assert sorted(p.name for p in (run / "validation" / "step_0000002").iterdir()) == ["0.mp4"]
    code, _ = recorded_train(root, "resume", args, tmp_path_factory, "")
    assert code == 0 and [s for s, _ in losses(run)] == [1, 2, 3, 4]


@pytest.mark.slow
@pytest.mark.distributed
def test_rank0_encodes_the_prompts_while_the_other_ranks_train(tiny, tmp_path_factory):
    """Rank 0's prompt encoding (minutes for umT5-XXL at 14B) must not hold the other ranks in a
    collective. Rank 0's encoding here starts only after rank 0 has trained a step (at most 150 s later):
    with the encoding in a background thread it starts at step 1 and the run finishes with its videos;
    encoding in the Validator's constructor (before training, as before issue 23) blocks rank 0's first
    step, so rank 1 waits past the run's 60 s collective timeout and the launch fails."""
    root, paths = tiny
    args = overrides(root, paths, "encode_while_training")
    code, output = recorded_train(root, "encode", args, tmp_path_factory, "encode_after_a_step", 0)
    assert code == 0, output
    assert "encode_after_a_step: encoding began after a training step" in output
    assert "prompts encoded in" in output and "(rank 0, while training)" in output
    assert video(root / "encode_while_training", 2).shape == (8, 16, 16, 3)


@pytest.mark.slow
@pytest.mark.distributed
def test_a_failed_prompt_encoding_stops_every_rank_with_its_error(tiny, tmp_path_factory):
    """The text encoder's weights are truncated: rank 0's background encoding fails while both ranks
    train. At the first validation every rank must stop with an error naming it, after the same
    collectives, not leave rank 1 waiting in a collective for rank 0 (a timeout) or reading a file that
    was never written."""
    root, paths = tiny
    broken = root / "text_truncated"
    shutil.copytree(paths["text"], broken)
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    args = overrides(root, paths, "encode_fails", 4, True, f"validation.text_encoder={broken}")
    with pytest.raises(AssertionError) as failed:
        recorded_train(root, "encode_fail", args, tmp_path_factory, "")
    message = str(failed.value)
    assert "diverged" not in message and "Timed out" not in message, message
    assert "error: validation: rank 0 could not encode the validation inputs" in message  # rank 1
    assert f"error: text encoder {broken}: cannot load (" in message, message  # rank 0: what failed
    assert "[rank0]: Traceback" not in message and "[rank1]: Traceback" not in message, message
    assert not (root / "encode_fails" / "validation" / "inputs.pt").exists()  # nothing half-written
