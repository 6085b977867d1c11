"""AE-Adapt-V for a two-expert (Wan 2.2 A14B-style) model, T2V and I2V: each expert runs the whole chain
against its own base (its own teacher embedder), phases 2-3 on its own timestep range, then both merged
folders are exported as one two-expert pipeline that ``generate`` runs (I2V: from an image, mask + image
latent channels, no CLIP tokens) and that converts back from its diffusers export. One job per expert
(docs/wan22.md says why)."""

import pytest
import torch

import megavg.models
from megavg.data import write_latent_shards
from megavg.infer.pipeline import open_pipeline
from tests.infer.tiny_encoders import tiny_text_encoder
from tests.infer.tiny_pipeline import read_video, write_png
from tests.tasks.test_adapt_chain import run, run_chain

BOUNDARY = 0.875
PRESETS = {  # base expert, its student (8 latent channels; I2V: 8 noise + 4 mask + 8 image latent)
    "t2v": ("wan-tiny-t2v", "wan-tiny-student-t2v"),
    "i2v": ("wan-tiny-i2v-a14b", "wan-tiny-student-i2v-a14b"),
}
C_STUDENT, MASK = 8, 4


def latent_shards(folder, base_args, i2v: bool) -> None:
    """Four hand-made samples: student and teacher latents (I2V: and each one's mask + image condition)."""
    c_base = base_args.out_channels
    samples = []
    for _ in range(4):
        sample = {
            "latents": torch.randn(C_STUDENT, 2, 4, 4),
            "text": torch.randn(5, base_args.text_dim),
            "teacher_latents": torch.randn(c_base, 2, 8, 8),
        }
        if i2v:
            sample["condition"] = torch.randn(MASK + C_STUDENT, 2, 4, 4)
            sample["teacher_condition"] = torch.randn(MASK + c_base, 2, 8, 8)
        samples.append(sample)
    write_latent_shards(samples, folder, samples_per_shard=2)


def export_generate_convert(tmp_path, image) -> None:
    """Both merged experts as one pipeline, ``generate`` on it, its diffusers export converted back."""
    megavg.models.build("dc-ae-v-tiny", latent_channels=C_STUDENT, scaling_factor=0.5).save(tmp_path / "vae")
    tiny_text_encoder(tmp_path / "umt5", d_model=32, umt5=True)
    pipe = tmp_path / "pipe"
    run("tools/export_pipeline.py", "--transformer", str(tmp_path / "high" / "lora-model"), "--transformer-2",
        str(tmp_path / "low" / "lora-model"), "--boundary", str(BOUNDARY), "--vae", str(tmp_path / "vae"),
        "--text-encoder", str(tmp_path / "umt5"), "--diffusers", "--out", str(pipe))  # fmt: skip
    assert open_pipeline(pipe).manifest.boundary == BOUNDARY
    first = ["--image", str(image)] if image else []
    run("-m", "megavg.infer.generate", str(pipe), "--prompt", "bikes video", *first, "--size", "32", "32",
        "--frames", "8", "--steps", "4", "--no-progress", "--out", str(tmp_path / "out.mp4"))  # fmt: skip
    video = read_video(tmp_path / "out.mp4")
    assert video.shape == (8, 32, 32, 3) and video.std() > 0
    run("tools/convert_official.py", "wan22", str(pipe / "diffusers"), "--out", str(tmp_path / "back"))
    for expert, name in (("high", "transformer"), ("low", "transformer_2")):
        merged = megavg.models.load(tmp_path / expert / "lora-model").state_dict()
        back = megavg.models.load(tmp_path / "back" / name).state_dict()
        assert all(torch.equal(merged[k].to(back[k].dtype), back[k]) for k in back)


# ~70 s each on 2 idle cores (twelve trainer launches, two runner ones); in the default suite
@pytest.mark.parametrize("kind", ["t2v", "i2v"])
def test_two_expert_chain_export_generate(tmp_path, kind):
    base_preset, student_preset = PRESETS[kind]
    for name, seed in (("high", 0), ("low", 1)):
        torch.manual_seed(seed)
        megavg.models.build(base_preset).save(tmp_path / name / "base")  # two different experts
    base = megavg.models.load(tmp_path / "high" / "base")
    i2v = kind == "i2v"
    latent_shards(tmp_path / "latents", base.args, i2v)
    c_in = megavg.models.preset_args(student_preset).in_channels
    assert c_in == (2 * C_STUDENT + MASK if i2v else C_STUDENT)
    ranges = {"high": f"[{BOUNDARY},1.0]", "low": f"[0.0,{BOUNDARY}]"}
    for name in ("high", "low"):  # run_chain asserts that every adapted weight moved, and nothing else
        run_chain(tmp_path / name, student_preset, tmp_path / "latents", c_in, C_STUDENT,
                  expert=[f"task.args.timestep_range={ranges[name]}"])  # fmt: skip
    if i2v:
        write_png(tmp_path / "first.png", 32, 32)
    export_generate_convert(tmp_path, tmp_path / "first.png" if i2v else None)
