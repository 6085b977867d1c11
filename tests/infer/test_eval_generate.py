"""``python -m megavg.eval generate``: N videos per prompt of a prompt file, VBench names, seeds in the
manifest; a video equals what ``megavg.infer.generate`` makes alone with the recorded prompt and seed."""

import json

import numpy as np

from megavg.eval.__main__ import main
from megavg.eval.inputs import list_videos
from megavg.infer import generate
from megavg.infer.export import main as export
from tests.infer.tiny_pipeline import read_video

FAST = ["--dtype", "fp32", "--steps", "2", "--size", "32", "48", "--frames", "8"]


def test_prompt_list_videos_and_manifest(tiny_parts, tmp_path, capsys):
    pipe = tmp_path / "t2v"
    export(["--transformer", str(tiny_parts["t2v"]), "--vae", str(tiny_parts["vae"]),
            "--text-encoder", str(tiny_parts["text"]), "--dtype", "fp32", "--out", str(pipe)])  # fmt: skip
    capsys.readouterr()  # the export's own lines
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\nfox in snow\n")
    out = tmp_path / "videos"
    main(["generate", str(pipe), "--prompts", str(prompts), "--per-prompt", "2", "--out", str(out),
          "--seed", "10", "--", *FAST])  # fmt: skip
    result = json.loads(capsys.readouterr().out)
    assert result["videos"] == 4 and result["prompts"] == 2
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["file"], r["prompt"], r["seed"]) for r in rows] == [
        ("a red fox-0.mp4", "a red fox", 10), ("a red fox-1.mp4", "a red fox", 11),
        ("fox in snow-0.mp4", "fox in snow", 12), ("fox in snow-1.mp4", "fox in snow", 13),
    ]  # fmt: skip
    assert [r.name for r in list_videos(str(out))] == [r["file"][:-4] for r in rows]  # fvd/recon read it
    alone = tmp_path / "alone.mp4"
    generate.main([str(pipe), "--prompt", "fox in snow", "--seed", "13", "--out", str(alone), *FAST])
    np.testing.assert_array_equal(read_video(out / "fox in snow-1.mp4"), read_video(alone))
    assert not np.array_equal(read_video(out / "fox in snow-0.mp4"), read_video(alone))
