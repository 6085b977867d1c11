"""``python -m megavg.eval generate``: N videos per prompt of a prompt file, VBench names, seeds in the
manifest; a video equals what ``megavg.infer.generate`` makes alone with the recorded prompt and seed."""

import json

import numpy as np
import pytest

from megavg.eval.__main__ import main
from megavg.eval.inputs import list_videos
from megavg.infer import generate, stages
from megavg.infer.export import main as export
from megavg.utils.errors import UserError
from tests import collectives
from tests.distributed.launch import REPO, torchrun
from tests.infer import kept_frames
from tests.infer.kept_frames import written_frames
from tests.infer.tiny_pipeline import read_video

RECORDED = REPO / "tests/distributed/recorded.py"

FAST = ["--dtype", "fp32", "--steps", "2", "--size", "32", "48", "--frames", "8"]


def export_pipeline(tiny_parts, pipe):
    export(["--transformer", str(tiny_parts["t2v"]), "--vae", str(tiny_parts["vae"]),
            "--text-encoder", str(tiny_parts["text"]), "--dtype", "fp32", "--out", str(pipe)])  # fmt: skip


def test_prompt_list_videos_and_manifest(tiny_parts, tmp_path, capsys, monkeypatch):
    pipe = tmp_path / "t2v"
    export_pipeline(tiny_parts, pipe)
    capsys.readouterr()  # the export's own lines
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red fox\n\nfox in snow\n")
    out = tmp_path / "videos"
    loads = []
    real_load = stages.load_transformer
    kept_frames.install(monkeypatch)
    monkeypatch.setattr(stages, "load_transformer", lambda *a: loads.append(1) or real_load(*a))
    main(["generate", str(pipe), "--prompts", str(prompts), "--per-prompt", "2", "--out", str(out),
          "--seed", "10", "--", *FAST])  # fmt: skip
    assert len(loads) == 1  # the models are loaded once for the four videos
    monkeypatch.undo()
    result = json.loads(capsys.readouterr().out)
    assert result["videos"] == 4 and result["prompts"] == 2
    rows = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert [(r["file"], r["prompt"], r["seed"]) for r in rows] == [
        ("a red fox-0.mp4", "a red fox", 10), ("a red fox-1.mp4", "a red fox", 11),
        ("fox in snow-0.mp4", "fox in snow", 12), ("fox in snow-1.mp4", "fox in snow", 13),
    ]  # fmt: skip
    assert [r.name for r in list_videos(str(out))] == [r["file"][:-4] for r in rows]  # fvd/recon read it
    alone = tmp_path / "alone.mp4"
    kept_frames.install(monkeypatch)  # again, after the undo above
    generate.main([str(pipe), "--prompt", "fox in snow", "--seed", "13", "--out", str(alone), *FAST])
    np.testing.assert_array_equal(written_frames(out / "fox in snow-1.mp4"), written_frames(alone))
    assert not np.array_equal(written_frames(out / "fox in snow-0.mp4"), written_frames(alone))


@pytest.mark.slow  # ~1.5 min on 2 busy cores (suite budget)
@pytest.mark.distributed
def test_two_ranks_share_the_videos_of_one(tiny_parts, tmp_path, monkeypatch):
    """``torchrun --nproc-per-node 2 -m megavg.eval generate``: the ranks split the videos (rank 0 the 1st
    and 3rd, rank 1 the 2nd), and the folder equals the one-process run's: same manifest, same videos;
    the ranks' collectives (the frame-count gather, the barrier) match."""
    pipe, prompts = tmp_path / "t2v", tmp_path / "prompts.txt"
    export_pipeline(tiny_parts, pipe)
    prompts.write_text("a red fox\nfox in snow\nsnow\n")
    argv = ["generate", str(pipe), "--prompts", str(prompts), "--per-prompt", "1", "--seed", "3"]
    kept_frames.install(monkeypatch)
    main([*argv, "--out", str(tmp_path / "one"), "--", *FAST])
    kept_frames.write_sitecustomize(tmp_path / "site")  # the ranks keep theirs too
    monkeypatch.setenv("PYTHONPATH", str(tmp_path / "site"))
    monkeypatch.setenv(collectives.ENV, str(tmp_path / "collectives"))
    two = tmp_path / "two"
    launch = lambda: torchrun(RECORDED, 2, two, "-m", "megavg.eval", *argv, "--out", str(two), "--", *FAST)  # noqa: E731
    collectives.checked_run(launch, tmp_path / "collectives", 2)
    one = (tmp_path / "one" / "manifest.jsonl").read_text()
    assert (two / "manifest.jsonl").read_text() == one
    for row in one.splitlines():
        name = json.loads(row)["file"]
        np.testing.assert_array_equal(written_frames(two / name), written_frames(tmp_path / "one" / name))
        assert read_video(two / name).shape == (8, 32, 48, 3)


def test_sp_in_eval_generate_is_one_error_line(tiny_parts, tmp_path):
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a fox\n")
    with pytest.raises(UserError, match="eval generate shares the videos among the ranks"):
        main(["generate", str(tmp_path), "--prompts", str(prompts), "--out", str(tmp_path / "o"), "--",
              "--sp", "2"])  # fmt: skip
