"""End to end on CPU: tiny components -> export_pipeline -> generate T2V and I2V -> MP4s read back with
PyAV; the diffusers export loads with from_pretrained and predicts what megavg predicts; bad input is
one error line, exit 2 and no output file."""

from __future__ import annotations

import subprocess
import sys

import av
import pytest
import torch

import megavg.infer.sampling
import megavg.models
from megavg.infer import generate, stages
from megavg.infer.export import main as export
from megavg.infer.runner import Pipeline
from megavg.infer.stage_log import StageLog, denoise_summary
from megavg.utils.errors import run_cli
from tests.distributed.launch import REPO
from tests.infer.tiny_pipeline import SCALING, read_video, write_png
from tests.models.wan_inputs import inputs
from tests.models.wan_reference import diffusers_forward

FAST = ["--dtype", "fp32", "--steps", "2", "--no-progress", "--size", "32", "48"]


@pytest.fixture(scope="module")
def pipes(tmp_path_factory, tiny_parts):
    root, paths = tmp_path_factory.mktemp("gen"), tiny_parts
    write_png(root / "first.png", 30, 40)
    common = ["--vae", str(paths["vae"]), "--text-encoder", str(paths["text"]), "--dtype", "fp32"]
    export(["--transformer", str(paths["t2v"]), *common, "--out", str(root / "t2v"), "--diffusers",
            "--max-shard-mib", "0.05", "--shift", "3.0"])  # fmt: skip
    export(["--transformer", str(paths["i2v"]), *common, "--image-encoder", str(paths["clip"]),
            "--copy-encoders", "--out", str(root / "i2v")])  # fmt: skip
    return root, paths


@pytest.fixture
def spy(monkeypatch):
    """Records the arguments the runner hands to the sampler (then runs the real sampler)."""
    calls = []
    real = megavg.infer.sampling.sample

    def recording(*args, **kwargs):
        calls.append((args, kwargs))
        calls.append(real(*args, **kwargs))
        return calls[-1]

    def decoding(vae, latents, *rest):
        calls.append(latents)
        return real_decode(vae, latents, *rest)

    real_decode = stages.decode_to_video
    monkeypatch.setattr(megavg.infer.sampling, "sample", recording)
    monkeypatch.setattr(stages, "decode_to_video", decoding)
    return calls


def test_t2v_video_frames_and_size(pipes, tmp_path, spy):
    root, _ = pipes
    out = tmp_path / "t2v.mp4"
    result = generate.main([str(root / "t2v"), "--prompt", "a red fox in snow", "--out", str(out),
                            "--frames", "10", *FAST])  # fmt: skip
    video = read_video(out)
    assert video.shape == (8, 32, 48, 3)  # 10 frames rounded down to the 4x grid
    assert result["frames"] == 8 and [r[0] for r in result["stages"]] == ["load", "text encode",
                                                                         "load transformer", "denoise",
                                                                         "decode"]  # fmt: skip
    (model, noise, text, negative), kwargs = spy[0]
    assert noise.shape == (1, 4, 2, 8, 12) and text.shape == negative.shape == (1, 512, 32)
    assert text[0, 6:].abs().max() == 0 and text[0, :6].abs().min() > 0  # 5 words + EOS, then zeros
    assert kwargs["shift"] == 3.0 and kwargs["steps"] == 2 and kwargs["condition"] is None
    sampled, decoded = spy[1], spy[2]
    torch.testing.assert_close(decoded, sampled / SCALING)  # DC-AE-V decodes latents / scaling factor
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t2v.mp4"]


def test_i2v_keeps_image_aspect_and_conditions_on_it(pipes, tmp_path, spy):
    root, paths = pipes
    out = tmp_path / "i2v.mp4"
    generate.main([str(root / "i2v"), "--prompt", "a fox", "--image", str(root / "first.png"),
                   "--out", str(out), "--frames", "8", "--offload", "--guidance", "1", *FAST])  # fmt: skip
    assert read_video(out).shape == (8, 32, 44, 3)  # 30x40 image at the 32x48 area, multiples of 4
    (_, noise, text, negative), kwargs = spy[0]
    assert negative is None  # guidance 1: no unconditional pass
    vae = megavg.models.load(paths["vae"])
    image = generate.load_image(root / "first.png")
    frame = torch.nn.functional.interpolate(image, size=(32, 44), mode="bicubic", antialias=True).clamp(-1, 1)
    from megavg.infer.conditioning import ImageEncoder, i2v_condition

    torch.testing.assert_close(kwargs["condition"], i2v_condition(vae.eval(), frame, 8))
    torch.testing.assert_close(kwargs["image"], ImageEncoder(paths["clip"])(image))
    assert kwargs["condition"].shape == (1, 8, 2, 8, 11) and noise.shape == (1, 4, 2, 8, 11)


def test_i2v_condition_is_encoded_before_the_dit_is_loaded(pipes, tmp_path, monkeypatch):
    """Without --offload the DiT would sit on the GPU during the 4K condition encode: it must come after."""
    import megavg.infer.conditioning as conditioning

    root, _ = pipes
    events = []
    encode, load = conditioning.i2v_condition, stages.load_transformer
    monkeypatch.setattr(conditioning, "i2v_condition", lambda *a: (events.append("condition"), encode(*a))[1])
    monkeypatch.setattr(stages, "load_transformer", lambda *a: (events.append("dit"), load(*a))[1])
    generate.main([str(root / "i2v"), "--prompt", "a fox", "--image", str(root / "first.png"),
                   "--out", str(tmp_path / "v.mp4"), "--frames", "8", "--guidance", "1", *FAST])  # fmt: skip
    assert events == ["condition", "dit"]


def test_diffusers_export_round_trip(pipes):
    from diffusers import WanTransformer3DModel

    root, _ = pipes
    folder = root / "t2v" / "transformer_diffusers"
    assert (folder / "diffusion_pytorch_model.safetensors.index.json").is_file()
    assert len(list(folder.glob("diffusion_pytorch_model-*.safetensors"))) > 1
    ref, info = WanTransformer3DModel.from_pretrained(folder, output_loading_info=True)
    assert not any(info[k] for k in ("missing_keys", "unexpected_keys", "mismatched_keys"))
    ours = megavg.models.load(root / "t2v" / "transformer").eval()
    x = inputs(ours.args)
    with torch.no_grad():
        torch.testing.assert_close(ours(*x), diffusers_forward(ref.eval(), *x), rtol=1e-5, atol=1e-5)


def bad(argv, capsys, out):
    with pytest.raises(SystemExit) as exit_info:
        run_cli(generate.main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_info.value.code == 2 and len(err) == 1 and err[0].startswith("error: "), err
    assert not list(out.parent.iterdir()), "no output (not even a partial one) on bad input"
    return err[0]


def test_bad_input(pipes, tmp_path, capsys):
    root, _ = pipes
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    out = out_dir / "v.mp4"
    args = ["--out", str(out), *FAST]
    assert "no such pipeline" in bad([str(tmp_path / "nope"), "--prompt", "a", *args], capsys, out)
    assert "not a pipeline" in bad([str(tmp_path), "--prompt", "a", *args], capsys, out)
    (tmp_path / "bad.png").write_bytes(b"\x89PNG not really")
    msg = bad([str(root / "i2v"), "--prompt", "a", "--image", str(tmp_path / "bad.png"), *args], capsys, out)
    assert "bad.png" in msg and "decodable" in msg
    (tmp_path / "empty.txt").write_text("  \n")
    empty = ["--prompt-file", str(tmp_path / "empty.txt")]
    assert "empty" in bad([str(root / "t2v"), *empty, *args], capsys, out)
    msg = bad([str(root / "t2v"), "--prompt", "a", *args, "--size", "30", "48"], capsys, out)
    assert "multiples of 4" in msg
    assert "T2V transformer" in bad([str(root / "i2v"), "--prompt", "a", *args], capsys, out)
    if not torch.cuda.is_available():
        assert "CUDA" in bad([str(root / "t2v"), "--prompt", "a", *args, "--device", "cuda"], capsys, out)


def test_runner_and_export_import_no_training_stack(pipes, tmp_path):
    """Standalone: nothing of megavg.train/tasks/parallel/data, deepspeed, peft, webdataset, tensorboard."""
    root, paths = pipes
    code = f"""
import sys
from megavg.infer.export import main as export
from megavg.infer.generate import main as generate
export(["--transformer", {str(paths["t2v"])!r}, "--vae", {str(paths["vae"])!r},
        "--text-encoder", {str(paths["text"])!r}, "--out", {str(tmp_path / "p")!r}, "--diffusers"])
generate([{str(root / "i2v")!r}, "--prompt", "a", "--image", {str(root / "first.png")!r},
          "--out", {str(tmp_path / "v.mp4")!r}, "--dtype", "fp32", "--steps", "1", "--frames", "4",
          "--size", "32", "32", "--no-progress"])
banned = ("deepspeed", "peft", "webdataset", "tensorboard", "megavg.train", "megavg.tasks",
          "megavg.parallel", "megavg.data")
loaded = sorted(m for m in sys.modules if any(m == b or m.startswith(b + ".") for b in banned))
print("LOADED", loaded)
"""
    proc = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "LOADED []" in proc.stdout, proc.stdout


def test_out_container_and_rounding_said_before_sampling(pipes, tmp_path, monkeypatch, warnings_log):
    root, _ = pipes
    seen_at_sampling = []
    real = megavg.infer.sampling.sample

    def sample(*args, **kwargs):
        seen_at_sampling.extend(warnings_log)
        return real(*args, **kwargs)

    monkeypatch.setattr(megavg.infer.sampling, "sample", sample)
    out = tmp_path / "fox.gif"
    generate.main([str(root / "t2v"), "--prompt", "a fox", "--out", str(out), "--frames", "3", *FAST])
    with av.open(str(out)) as container:
        assert container.streams.video[0].codec_context.name == "gif"
    assert read_video(out).shape == (4, 32, 48, 3)  # 3 frames: at least one multiple of 4
    assert any("--frames 3" in m and "generating 4 frames" in m for m in seen_at_sampling), warnings_log

    args = generate.parse_args([str(root / "i2v"), "--prompt", "a", "--image", str(root / "first.png"),
                                "--out", str(tmp_path / "i2v.webm"), *FAST])  # fmt: skip
    assert generate.build_request(args, Pipeline.from_pretrained(args.pipeline, "cpu")).size == (32, 44)
    assert any("--size 32 48 with --image: generating 32x44" in m for m in warnings_log), warnings_log


def test_cpu_warns_once_about_gpu_sized_defaults(warnings_log):
    generate.warn_cpu_defaults(generate.parse_args(["p", "--prompt", "a", "--out", "o.mp4"]), 50)
    assert len(warnings_log) == 1
    assert all(s in warnings_log[0] for s in ("--size 704 1280", "--frames 80", "--steps 50", "--size 256"))
    generate.warn_cpu_defaults(
        generate.parse_args(["p", "--prompt", "a", "--out", "o.mp4", "--frames", "8", *FAST]), 2
    )
    gpu = ["p", "--prompt", "a", "--out", "o.mp4", "--device", "meta"]  # the defaults, not on a CPU
    generate.warn_cpu_defaults(generate.parse_args(gpu), 50)
    assert len(warnings_log) == 1  # small runs, and non-CPU devices, are not warned about


def test_unsupported_out_extension(pipes, tmp_path, capsys):
    root, _ = pipes
    out = tmp_path / "out" / "v.avi"
    out.parent.mkdir()
    msg = bad([str(root / "t2v"), "--prompt", "a", "--out", str(out), *FAST], capsys, out)
    assert "v.avi" in msg and "'.avi'" in msg and ".mp4, .webm, .gif" in msg


def test_stage_table_columns_line_up_whatever_the_stage_names():
    stages = StageLog(torch.device("cpu"))
    stages.rows = [("load", 1.5, 400.0), ("load transformer", 12.25, 512.0), ("denoise", 3.0, 600.0)]
    lines = stages.report().splitlines()
    seconds = [line.index("seconds") + len("seconds") for line in lines[:1]]
    ends = [len(line) - 12 for line in lines[1:]]  # each row: name, seconds (10 wide), peak MiB (12 wide)
    assert set(ends) == set(seconds), stages.report()
    assert lines[2].startswith("load transformer ")


def test_denoise_summary_parts_add_up_to_the_stage():
    """4 steps: first 0.5 s, the other three 0.4 s each = 1.7 s in the loop; the stage took 2 s."""
    stats = {"first_step_s": 0.5, "step_s": 0.4, "mode": "batched"}
    line = denoise_summary(2.0, 4, stats)
    assert line == ("denoise 2.00 s = 4 steps 1.70 s (first 0.500 s, then 0.400 s each) + 0.30 s around "
                    "the steps; CFG batched")  # fmt: skip
    one = denoise_summary(0.5, 1, {"first_step_s": 0.4, "step_s": 0.4, "mode": "off"})
    assert one == "denoise 0.50 s = 1 step 0.40 s (first 0.400 s) + 0.10 s around the steps; CFG off"
