"""AE-Adapt-V for a two-expert (Wan 2.2 A14B-style) model: each expert runs the whole chain against its own
base (its own teacher embedder), phases 2-3 on its own timestep range, then both merged folders are exported
as one two-expert pipeline that ``generate`` runs. One job per expert (docs/wan22.md says why)."""

import pytest
import torch

import megavg.models
from megavg.data import write_latent_shards
from megavg.infer.pipeline import open_pipeline
from tests.infer.tiny_encoders import tiny_text_encoder
from tests.infer.tiny_pipeline import read_video
from tests.tasks.test_adapt_chain import run, run_chain

BOUNDARY = 0.875


@pytest.mark.slow  # twelve trainer processes and two runner ones
def test_two_expert_chain_export_generate(tmp_path):
    torch.manual_seed(0)
    c_student = 8
    for name, seed in (("high", 0), ("low", 1)):
        torch.manual_seed(seed)
        megavg.models.build("wan-tiny-t2v").save(tmp_path / name / "base")  # two different experts
    base = megavg.models.load(tmp_path / "high" / "base")
    samples = [
        {
            "latents": torch.randn(c_student, 2, 4, 4),
            "text": torch.randn(5, base.args.text_dim),
            "teacher_latents": torch.randn(base.args.in_channels, 2, 8, 8),
        }
        for _ in range(4)
    ]
    write_latent_shards(samples, tmp_path / "latents", samples_per_shard=2)
    ranges = {"high": f"[{BOUNDARY},1.0]", "low": f"[0.0,{BOUNDARY}]"}
    for name in ("high", "low"):  # run_chain asserts that every adapted weight moved, and nothing else
        run_chain(
            tmp_path / name,
            "wan-tiny-student-t2v",
            tmp_path / "latents",
            c_student,
            c_student,
            expert=[f"task.args.timestep_range={ranges[name]}"],
        )
    megavg.models.build("dc-ae-v-tiny", latent_channels=c_student, scaling_factor=0.5).save(tmp_path / "vae")
    tiny_text_encoder(tmp_path / "umt5", d_model=base.args.text_dim, umt5=True)
    pipe = tmp_path / "pipe"
    run(
        "tools/export_pipeline.py",
        "--transformer",
        str(tmp_path / "high" / "lora-model"),
        "--transformer-2",
        str(tmp_path / "low" / "lora-model"),
        "--boundary",
        str(BOUNDARY),
        "--vae",
        str(tmp_path / "vae"),
        "--text-encoder",
        str(tmp_path / "umt5"),
        "--diffusers",
        "--out",
        str(pipe),
    )
    assert open_pipeline(pipe).manifest.boundary == BOUNDARY
    run(
        "-m",
        "megavg.infer.generate",
        str(pipe),
        "--prompt",
        "bikes video",
        "--size",
        "32",
        "32",
        "--frames",
        "8",
        "--steps",
        "4",
        "--no-progress",
        "--out",
        str(tmp_path / "out.mp4"),
    )
    video = read_video(tmp_path / "out.mp4")
    assert video.shape == (8, 32, 32, 3) and video.std() > 0
    run("tools/convert_official.py", "wan22", str(pipe / "diffusers"), "--out", str(tmp_path / "back"))
    for expert, name in (("high", "transformer"), ("low", "transformer_2")):
        merged = megavg.models.load(tmp_path / expert / "lora-model").state_dict()
        back = megavg.models.load(tmp_path / "back" / name).state_dict()
        assert all(torch.equal(merged[k].to(back[k].dtype), back[k]) for k in back)
