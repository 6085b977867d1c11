"""Tiny generation components built locally (no download): DiT, DC-AE-V, umT5 + tokenizer, CLIP.

Also run as a script by the fresh-venv test (``python tests/infer/tiny_pipeline.py ROOT``), so it uses
only base-install packages: torch, transformers, tokenizers, av, numpy.
"""

from __future__ import annotations

import dataclasses
import sys
from pathlib import Path

import av
import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers, processors

import megavg.models

WORDS = ["<pad>", "</s>", "<unk>", "a", "red", "fox", "in", "snow", "blurry"]
TEXT_DIM = 32  # = the tiny Wan preset's text_dim
CLIP_DIM = 24  # = the tiny I2V preset's image_dim
SCALING = 0.8


def tiny_umt5(folder: Path) -> None:
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    # umT5's tokenizer appends </s> to every caption (so "" encodes to one EOS row, the null condition)
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    config = transformers.UMT5Config(
        vocab_size=len(WORDS), d_model=TEXT_DIM, d_kv=8, num_heads=2, d_ff=32, num_layers=1
    )
    transformers.UMT5EncoderModel(config).save_pretrained(folder)


def tiny_clip(folder: Path) -> None:
    config = transformers.CLIPVisionConfig(
        hidden_size=CLIP_DIM, intermediate_size=32, num_hidden_layers=2, num_attention_heads=2,
        image_size=28, patch_size=14,
    )  # fmt: skip
    transformers.CLIPVisionModel(config).save_pretrained(folder)


def tiny_dit(i2v: bool):
    """Tiny student DiT on the tiny DC-AE-V's 4 latent channels (I2V: 4 noisy + 4 mask + 4 condition)."""
    preset = megavg.models.preset_args("wan-tiny-student-i2v" if i2v else "wan-tiny-student-t2v")
    args = dataclasses.replace(preset, in_channels=12 if i2v else 4, out_channels=4)
    model = megavg.models.build(args).eval()
    with torch.no_grad():  # the head starts at zero in presets; make the prediction non-trivial
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.05)
    return model


def build_components(root: Path) -> dict[str, Path]:
    """Every component folder under ``root``; returns their paths by name."""
    torch.manual_seed(0)
    root = Path(root)
    paths = {name: root / name for name in ("t2v", "i2v", "vae", "text", "clip")}
    tiny_dit(False).save(paths["t2v"])
    tiny_dit(True).save(paths["i2v"])
    vae_args = dataclasses.replace(megavg.models.preset_args("dc-ae-v-tiny"), scaling_factor=SCALING)
    megavg.models.build(vae_args).save(paths["vae"])
    tiny_umt5(paths["text"])
    tiny_clip(paths["clip"])
    return paths


def build_adapt_parts(root: Path) -> dict[str, Path]:
    """What AE-Adapt-V starts from, tiny (``bash tools/demo.sh adapt``): a base Wan DiT (patch 1x2x2, 4
    latent channels, umT5 width ``TEXT_DIM``) and its VAE, a Wan-2.1 ``AutoencoderKLWan`` with 4 latent
    channels (diffusers, a dev dependency); returns their paths by name."""
    from tests.infer.tiny_encoders import tiny_wan_vae

    torch.manual_seed(0)
    root = Path(root)
    base = megavg.models.build("wan-tiny-t2v")
    assert base.args.text_dim == TEXT_DIM
    base.save(root / "base")
    tiny_wan_vae(root / "wan", z_dim=base.args.in_channels)
    return {"base": root / "base", "wan": root / "wan"}


def write_png(path: Path, height: int, width: int, seed: int = 0) -> None:
    """A random RGB PNG written with PyAV."""
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), mode="w", format="image2") as container:
        stream = container.add_stream("png")
        stream.width, stream.height, stream.pix_fmt = width, height, "rgb24"
        for packet in stream.encode(av.VideoFrame.from_ndarray(pixels, format="rgb24")):
            container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def read_video(path: Path) -> np.ndarray:
    """All frames of an MP4 as [N, H, W, 3] uint8."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


if __name__ == "__main__":  # python tests/infer/tiny_pipeline.py ROOT [--adapt]
    build_components(Path(sys.argv[1]))
    write_png(Path(sys.argv[1]) / "first.png", 30, 40)
    if "--adapt" in sys.argv[2:]:
        sys.path.insert(0, str(Path(__file__).resolve().parents[2]))  # run as a script: the repository
        build_adapt_parts(Path(sys.argv[1]))
