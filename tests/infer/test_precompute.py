"""Latent pre-computation: latent shards hold exactly vae.encode(first frames) and the T5 embedding of
the caption, computed here independently with PyAV and transformers; partitions cover every shard."""

import av
import numpy as np
import pytest
import torch
import transformers
from tokenizers import Tokenizer, models, pre_tokenizers

import megavg.models
from megavg.data import DataConfig, build_loader
from megavg.data.make_shards import main as make_shards
from megavg.data.samples import real_clips
from megavg.data.video import resize_crop
from megavg.infer.precompute import main as precompute

WORDS = ["<pad>", "</s>", "<unk>", "a", "car", "phone", "bikes", "video"]


def tiny_text_encoder(folder):
    """A random 1-layer T5 encoder + word-level tokenizer saved like a hub folder (no download)."""
    tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(WORDS)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>"
    )
    fast.save_pretrained(folder)
    config = transformers.T5Config(
        vocab_size=len(WORDS), d_model=16, d_kv=4, num_heads=2, d_ff=32, num_layers=1
    )
    transformers.T5EncoderModel(config).save_pretrained(folder)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("precompute")
    clips = real_clips()[:2]
    (root / "captions.csv").write_text(f"{clips[0].name},a car phone video\n{clips[1].name},bikes\n")
    make_shards([*map(str, clips), "--out", str(root / "videos"), "--captions", str(root / "captions.csv"),
                 "--samples-per-shard", "1"])  # fmt: skip
    megavg.models.build("dc-ae-v-tiny").save(root / "vae")
    tiny_text_encoder(root / "text")
    return root, clips


def first_frames(path, count, size):
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(count), container.decode(video=0))]
    return resize_crop(np.stack(frames), size)


def test_latent_shards_match_independent_encode(inputs):
    root, clips = inputs
    common = ["--vae", str(root / "vae"), "--shards", str(root / "videos"), "--frames", "8",
              "--text-encoder", str(root / "text"), "--size", "32", "32",
              "--out", str(root / "latents"), "--parts", "2"]  # fmt: skip
    parts = [precompute([*common, "--part", str(p)]) for p in range(2)]
    vae = megavg.models.load(root / "vae").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "text")
    t5 = transformers.T5EncoderModel.from_pretrained(root / "text").eval()
    captions = {clips[0].name: "a car phone video", clips[1].name: "bikes"}
    seen = set()
    for part in parts:
        cfg = DataConfig(shards=str(part), kind="latent", shuffle_buffer=1)
        batch = next(iter(build_loader(cfg, dp_rank=0, dp_size=1, seed=0)))
        clip = next(c for c in clips if captions[c.name] == batch["caption"][0])
        seen.add(clip.name)
        with torch.no_grad():
            expected = vae.encode(first_frames(clip, 8, (32, 32)).unsqueeze(0))[0]
            ids = tokenizer(batch["caption"][0], return_tensors="pt").input_ids
            embedding = t5(input_ids=ids).last_hidden_state[0]
        torch.testing.assert_close(batch["latents"][0], expected, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch["text"][0], embedding, rtol=1e-5, atol=1e-5)
    assert seen == set(captions)


def test_bad_part_and_missing_text_encoder(inputs, tmp_path):
    from megavg.utils.errors import UserError

    root, _ = inputs
    common = ["--vae", str(root / "vae"), "--shards", str(root / "videos"), "--frames", "8",
              "--size", "32", "32", "--out", str(tmp_path / "out")]  # fmt: skip
    with pytest.raises(UserError, match="--part 3 is not in"):
        precompute([*common, "--text-encoder", str(root / "text"), "--part", "3", "--parts", "2"])
    with pytest.raises(UserError, match="text encoder .*nope: cannot load"):
        precompute([*common, "--text-encoder", str(tmp_path / "nope")])
    assert not (tmp_path / "out").exists()
