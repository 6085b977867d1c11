"""What training feeds the DiT equals what ``generate`` feeds it (issue 15: "training and sampling give the
DiT different text"). A tiny DiT is trained through the real trainer on latent shards carrying a caption's
umT5 states; then, for that caption, the text context the DiT receives in a training step (real loader +
the flow-matching task's loss) and in ``generate`` (real runner, recorded at the DiT's forward) must have
the same length (512) and the same rows, the null condition of text dropout must equal generate's
unconditional context, and the trained DiT's prediction must therefore be the same under both."""

from __future__ import annotations

import subprocess
import sys

import pytest
import torch

import megavg.models.wan.model as wan_model
from megavg.data import DataConfig, build_loader, write_latent_shards
from megavg.infer import generate
from megavg.infer.export import main as export
from megavg.infer.text import TextEncoder
from megavg.models import registry
from megavg.tasks import build_task
from megavg.tasks.base import StepContext
from megavg.train.config import load_config
from tests.distributed.launch import REPO

CAPTION = "a red fox in snow"
OTHERS = ["a fox", "snow", "red snow in a fox"]


def run(*args):
    proc = subprocess.run([sys.executable, *args], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.fixture(scope="module")
def trained(tmp_path_factory, tiny_parts):
    """(root, shards, trained model folder, exported pipeline): 6 optimizer steps of flow matching on
    4 samples whose text is the tiny umT5's states of each caption, null_text its states of ""."""
    root = tmp_path_factory.mktemp("text_path")
    encoder = TextEncoder(str(tiny_parts["text"]))
    gen = torch.Generator().manual_seed(0)
    samples = [
        {"key": f"s{i}", "caption": c, "latents": torch.randn(4, 2, 8, 12, generator=gen),
         "text": encoder([c])[0], "null_text": encoder([""])[0]}
        for i, c in enumerate([CAPTION, *OTHERS])
    ]  # fmt: skip
    write_latent_shards(samples, root / "shards", samples_per_shard=4)
    run("-m", "megavg.train", "--config", "configs/train/wan_flow_tiny.yaml", f"run.dir={root / 'run'}",
        f"data.shards={root / 'shards'}", f"model.init={tiny_parts['t2v']}", "model.preset=",
        "schedule.steps=6", "data.batch_size=2", "logging.tensorboard=false")  # fmt: skip
    run("tools/consolidate.py", str(root / "run"), "--out", str(root / "model"), "--raw")
    export(["--transformer", str(root / "model"), "--vae", str(tiny_parts["vae"]), "--text-encoder",
            str(tiny_parts["text"]), "--dtype", "fp32", "--out", str(root / "pipe")])  # fmt: skip
    return root


def training_contexts(root) -> tuple[torch.Tensor, torch.Tensor]:
    """(caption context, null context) [1, L, D] as the flow-matching task hands them to the DiT: the real
    loader's batch of the caption's sample through ``Task.loss``, with text dropout 0 and then 1."""
    cfg = load_config(REPO / "configs/train/wan_flow_tiny.yaml", [f"data.shards={root / 'shards'}"])
    loader = build_loader(DataConfig(shards=str(root / "shards"), kind="latent", batch_size=1), 0, 1, 0)
    batch = next(b for b in loader if b["caption"] == [CAPTION])
    seen = []

    def recording(latents, timestep, text, image=None):
        seen.append(text)
        return torch.zeros_like(latents)

    for dropout in (0.0, 1.0):
        task = build_task(cfg)
        task.args.text_dropout = dropout
        ctx = StepContext(0, torch.Generator().manual_seed(0), torch.device("cpu"), torch.float32)
        task.loss(recording, batch, ctx)
    return seen[0], seen[1]


def generate_contexts(root, tmp_path, monkeypatch) -> tuple[torch.Tensor, torch.Tensor]:
    """(conditional, unconditional) text context the DiT receives in ``generate`` (recorded at forward)."""
    seen = []
    forward = wan_model.Model.forward

    def recording(self, latents, timestep, text, image=None, **hooks):  # hooks: context, step_cache
        seen.append(text.clone())
        return forward(self, latents, timestep, text, image, **hooks)

    monkeypatch.setattr(wan_model.Model, "forward", recording)
    generate.main([str(root / "pipe"), "--prompt", CAPTION, "--out", str(tmp_path / "v.mp4"), "--steps", "1",
                   "--size", "32", "48", "--frames", "8", "--dtype", "fp32", "--no-progress"])  # fmt: skip
    rows = torch.cat(seen)  # step 1: conditional then unconditional rows (one batched CFG call, or two)
    return rows[0:1], rows[1:2]


def test_training_and_generate_feed_the_same_text(trained, tmp_path, monkeypatch):
    train_text, train_null = training_contexts(trained)
    gen_text, gen_null = generate_contexts(trained, tmp_path, monkeypatch)
    assert train_text.shape == gen_text.shape == (1, 512, 32)
    assert train_null.shape == gen_null.shape == (1, 512, 32)
    real = int(train_text[0].abs().sum(-1).gt(0).sum())
    assert real == 6  # 5 words + EOS, then zero rows up to 512
    torch.testing.assert_close(train_text, gen_text, rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(train_null, gen_null, rtol=1e-6, atol=1e-6)
    assert train_null[0, 0].abs().sum() > 0  # the encoded "" (EOS), not all zeros


def test_trained_dit_predicts_the_same_through_the_sampler_text_path(trained, tmp_path, monkeypatch):
    train_text, train_null = training_contexts(trained)
    gen_text, gen_null = generate_contexts(trained, tmp_path, monkeypatch)
    model = registry.load(trained / "model").eval()
    gen = torch.Generator().manual_seed(1)
    x_t, t = torch.randn(1, 4, 2, 8, 12, generator=gen), torch.tensor([700.0])
    with torch.no_grad():
        for train, sampled in ((train_text, gen_text), (train_null, gen_null)):
            expected = model(x_t, t, train)
            torch.testing.assert_close(model(x_t, t, sampled), expected, rtol=1e-5, atol=1e-6)
        # the padding is part of the condition: the unpadded caption (what batches held before) differs
        unpadded = model(x_t, t, train_text[:, :6])
        assert (unpadded - model(x_t, t, train_text)).abs().mean() > 1e-3
