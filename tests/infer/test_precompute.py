"""Latent pre-computation: latent shards hold exactly what an independent computation gives (PyAV frames,
DC-AE-V encode times its scaling factor, the T5 embedding, diffusers' Wan VAE on the teacher's clip,
normalised as Wan's pipelines do); partitions cover every shard; one set holds every bucket."""

import itertools
import json
import shutil

import av
import numpy as np
import pytest
import torch
import transformers

import megavg.models
from megavg.data import DataConfig, build_loader
from megavg.data.make_shards import main as make_shards
from megavg.data.samples import real_clips
from megavg.data.video import resize_crop
from megavg.infer.precompute import main as precompute
from megavg.utils.errors import UserError
from tests.infer.tiny_encoders import tiny_clip, tiny_text_encoder, tiny_wan_vae

CAPTIONS = {"bikes.mp4": "bikes", "carphone_pristine.mp4": "a car phone video"}
SCALE = 0.5  # DC-AE-V scaling factor of the test VAE (1.0 would hide a missing factor)


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    root = tmp_path_factory.mktemp("precompute")
    clips = [c for c in real_clips() if c.name in CAPTIONS]  # 640x272 and 176x144
    (root / "captions.csv").write_text("".join(f"{c.name},{CAPTIONS[c.name]}\n" for c in clips))
    make_shards([*map(str, clips), "--out", str(root / "videos"), "--captions", str(root / "captions.csv"),
                 "--samples-per-shard", "1"])  # fmt: skip
    megavg.models.build("dc-ae-v-tiny", scaling_factor=SCALE).save(root / "vae")
    tiny_text_encoder(root / "text")
    tiny_wan_vae(root / "wan")
    tiny_clip(root / "clip")
    return root, clips


def common_args(root, out, *sizes):
    args = ["--vae", str(root / "vae"), "--shards", str(root / "videos"), "--frames", "8",
            "--text-encoder", str(root / "text"), "--out", str(out)]  # fmt: skip
    for h, w in sizes:
        args += ["--size", str(h), str(w)]
    return args


def first_frames(path, count, size):
    """[3, T, H, W] in [-1, 1]: the first ``count`` frames decoded by PyAV, resized and cropped."""
    with av.open(str(path)) as container:
        frames = [f.to_ndarray(format="rgb24") for _, f in zip(range(count), container.decode(video=0))]
    return resize_crop(np.stack(frames), size)


def first_batches(parts, per_part=1):
    """The first ``per_part`` samples of each part folder (in order: no shuffle buffer), by caption."""
    batches = {}
    for part in parts:
        cfg = DataConfig(shards=str(part), kind="latent", shuffle_buffer=1)
        for batch in itertools.islice(build_loader(cfg, dp_rank=0, dp_size=1, seed=0), per_part):
            batches[batch["caption"][0]] = batch
    return batches


def wan_encode(folder, clip):
    """Diffusers' Wan VAE on ``clip`` [3, 4k+1, H, W], posterior mode, normalised as
    WanImageToVideoPipeline does: (z - mean) * (1 / std)."""
    from diffusers import AutoencoderKLWan

    wan = AutoencoderKLWan.from_pretrained(folder, subfolder="vae").eval()
    with torch.no_grad():
        z = wan.encode(clip.unsqueeze(0)).latent_dist.mode()
    mean = torch.tensor(wan.config.latents_mean).view(1, -1, 1, 1, 1)
    inv_std = 1.0 / torch.tensor(wan.config.latents_std).view(1, -1, 1, 1, 1)
    return ((z - mean) * inv_std)[0]


def wan_teacher_latents(folder, video):
    """The teacher's clip: the student's frames with the first one repeated in front (4k+1 frames)."""
    return wan_encode(folder, torch.cat([video[:, :1], video], dim=1))


def test_latent_shards_match_independent_encode(inputs):
    root, clips = inputs
    common = [
        *common_args(root, root / "latents", (32, 32)),
        "--parts",
        "2",
        "--teacher-vae",
        str(root / "wan"),
    ]
    parts = [p for part in range(2) for p in precompute([*common, "--part", str(part)])]
    assert sorted(p.relative_to(root / "latents").as_posix() for p in parts) == ["part-00000", "part-00001"]
    vae = megavg.models.load(root / "vae").eval()
    tokenizer = transformers.AutoTokenizer.from_pretrained(root / "text")
    t5 = transformers.T5EncoderModel.from_pretrained(root / "text").eval()
    batches = first_batches(parts)
    assert set(batches) == set(CAPTIONS.values())
    for clip in clips:
        batch = batches[CAPTIONS[clip.name]]
        video = first_frames(clip, 8, (32, 32))
        with torch.no_grad():
            expected = vae.encode(video.unsqueeze(0))[0] * SCALE
            ids = tokenizer(CAPTIONS[clip.name], return_tensors="pt").input_ids
            embedding = t5(input_ids=ids).last_hidden_state[0]
            null = t5(input_ids=tokenizer("", return_tensors="pt").input_ids).last_hidden_state[0]
        torch.testing.assert_close(batch["latents"][0], expected, rtol=1e-5, atol=1e-5)
        # the caption's states, then zero rows up to Wan's 512 tokens (what the sampler feeds the DiT)
        n, n0 = embedding.shape[0], null.shape[0]
        assert batch["text"].shape[1] == batch["null_text"].shape[1] == 512
        torch.testing.assert_close(batch["text"][0, :n], embedding, rtol=1e-5, atol=1e-5)
        assert not batch["text"][0, n:].any()
        # the null condition of text dropout: the empty caption's encoding, padded the same way
        torch.testing.assert_close(batch["null_text"][0, :n0], null, rtol=1e-5, atol=1e-5)
        assert not batch["null_text"][0, n0:].any()
        teacher = wan_teacher_latents(root / "wan", video)
        assert teacher.shape == (16, 3, 4, 4)  # 9 frames -> 3 latent frames, f8
        torch.testing.assert_close(batch["teacher_latents"][0], teacher, rtol=1e-4, atol=1e-4)


def test_dcaev_teacher_latents(inputs, tmp_path):
    """A megavg DC-AE-V folder as --teacher-vae (a miniature's base VAE, docs/reproduction.md): its
    latents of the student's own frames times its scaling factor, computed independently here."""
    root, clips = inputs
    teacher = megavg.models.build("dc-ae-v-tiny", scaling_factor=0.25)
    teacher.save(tmp_path / "teacher")
    parts = precompute(
        [*common_args(root, tmp_path / "latents", (32, 32)), "--teacher-vae", str(tmp_path / "teacher")]
    )
    batches = first_batches(parts, per_part=2)
    teacher = megavg.models.load(tmp_path / "teacher").eval()
    for clip in clips:
        video = first_frames(clip, 8, (32, 32))
        with torch.no_grad():
            expected = teacher.encode(video.unsqueeze(0))[0] * 0.25
        got = batches[CAPTIONS[clip.name]]["teacher_latents"][0]
        assert got.shape == (4, 2, 8, 8)  # the student's frame count (no extra first frame), f4
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)


def wan_mask(frames, h, w):
    """The base I2V mask as diffusers' WanImageToVideoPipeline builds it: 1 on pixel frame 0, that frame
    repeated 4x, frames folded 4 per latent frame into channels -> [4, k+1, h, w]."""
    mask = torch.ones(1, 1, frames, h, w)
    mask[:, :, 1:] = 0
    mask = torch.cat([mask[:, :, :1].repeat_interleave(4, dim=2), mask[:, :, 1:]], dim=2)
    return mask.view(1, -1, 4, h, w).transpose(1, 2)[0]


def clip_tokens(folder, image):
    """Penultimate CLIP hidden states of ``image`` [3, H, W] in [-1, 1] (bicubic to the input size,
    CLIP mean/std from transformers' processor)."""
    model = transformers.CLIPVisionModel.from_pretrained(folder).eval()
    processor = transformers.CLIPImageProcessor()
    size = model.config.image_size
    x = torch.nn.functional.interpolate(image[None], size=(size, size), mode="bicubic", align_corners=False)
    mean = torch.tensor(processor.image_mean).view(1, 3, 1, 1)
    std = torch.tensor(processor.image_std).view(1, 3, 1, 1)
    with torch.no_grad():
        return model(pixel_values=((x + 1) / 2 - mean) / std, output_hidden_states=True).hidden_states[-2][0]


def test_i2v_condition_clip_tokens_and_teacher_condition(inputs, tmp_path):
    root, clips = inputs
    args = [*common_args(root, tmp_path / "latents", (32, 32)), "--teacher-vae", str(root / "wan"),
            "--i2v", "--image-encoder", str(root / "clip")]  # fmt: skip
    batches = first_batches(precompute(args), per_part=2)
    vae = megavg.models.load(root / "vae").eval()
    for clip in clips:
        batch = batches[CAPTIONS[clip.name]]
        video = first_frames(clip, 8, (32, 32))
        image = video[:, 0]  # 3, H, W: the clip's first frame is the I2V image
        given = torch.cat([image[:, None].expand(-1, 4, -1, -1), torch.zeros(3, 4, 32, 32)], dim=1)
        with torch.no_grad():
            cond = vae.encode(given[None])[0] * SCALE  # 8, 2, 8, 8
        mask = torch.zeros(4, *cond.shape[1:])
        mask[:, 0] = 1
        torch.testing.assert_close(batch["condition"][0], torch.cat([mask, cond]), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(batch["image"][0], clip_tokens(root / "clip", image), rtol=1e-5, atol=1e-5)
        assert batch["image"].shape[1:] == (5, 24)  # (28 / 14)^2 + 1 tokens
        # the base I2V model's condition: the image then 8 zero frames through the Wan VAE (no repeat)
        teacher_given = torch.cat([image[:, None], torch.zeros(3, 8, 32, 32)], dim=1)
        expected = torch.cat([wan_mask(9, 4, 4), wan_encode(root / "wan", teacher_given)])
        torch.testing.assert_close(batch["teacher_condition"][0], expected, rtol=1e-4, atol=1e-4)


def test_one_set_holds_every_bucket_and_rerun_skips(inputs, tmp_path):
    root, _ = inputs
    args = common_args(root, tmp_path / "latents", (32, 32), (32, 64))
    parts = precompute(args)
    assert [p.relative_to(tmp_path / "latents").as_posix() for p in parts] == ["part-00000"]
    # 176x144 (aspect 1.22) is nearest to 1:1, 640x272 (2.35) to 2:1; DC-AE-V tiny is f4t4
    index = json.loads((parts[0] / "index.json").read_text())
    assert index["buckets"] == {"2x8x8": 1, "2x8x16": 1}
    assert sorted(s["bucket"] for s in index["shards"]) == ["2x8x16", "2x8x8"]
    glob = DataConfig(shards=f"{tmp_path / 'latents'}/part-*/*.tar", kind="latent", shuffle_buffer=1)
    batches = list(itertools.islice(build_loader(glob, dp_rank=0, dp_size=1, seed=0), 8))
    shapes = {b["caption"][0]: b["latents"].shape[-3:] for b in batches}
    assert shapes == {"a car phone video": (2, 8, 8), "bikes": (2, 8, 16)}
    stamp = [p.stat().st_mtime_ns for p in parts]
    assert precompute(args) == []  # complete parts are kept: a crashed run is simply rerun
    assert [p.stat().st_mtime_ns for p in parts] == stamp


def test_bad_flags(inputs, tmp_path):
    root, _ = inputs
    common = common_args(root, tmp_path / "out", (32, 32))
    text = ["--text-encoder", str(root / "text")]
    with pytest.raises(UserError, match="--part 3 is not in"):
        precompute([*common, *text, "--part", "3", "--parts", "2"])
    with pytest.raises(UserError, match="text encoder .*nope: cannot load"):
        precompute([*common, "--text-encoder", str(tmp_path / "nope")])
    broken = shutil.copytree(root / "text", tmp_path / "truncated")  # SafetensorError, not an OSError
    weights = next(broken.glob("*.safetensors"))
    weights.write_bytes(weights.read_bytes()[:1000])
    with pytest.raises(UserError, match=r"text encoder .*truncated: cannot load \(.*header"):
        precompute([*common, "--text-encoder", str(broken)])
    with pytest.raises(UserError, match="teacher VAE .*nope: cannot load"):
        precompute([*common, "--teacher-vae", str(tmp_path / "nope")])
    with pytest.raises(UserError, match="--i2v and --image-encoder go together"):
        precompute([*common, "--i2v"])
    with pytest.raises(UserError, match="--frames 6: must be a multiple of 4"):
        precompute([*common, "--teacher-vae", str(root / "wan"), "--frames", "6"])
    assert not (tmp_path / "out").exists()
