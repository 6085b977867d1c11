"""`pip install megavg` (base, no extras) is enough to export a pipeline and generate T2V and I2V videos.

A fresh virtualenv (no system site-packages) gets torch, then megavg from a copy of this tree with no
extras, and nothing of the training stack; tiny components are built inside it, exported and generated
from. Two pip installs, so marked ``slow``; no bytecode compilation, no build isolation, the local torch
wheel and pip's cache keep it to about three minutes on a busy 2-core machine.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import venv

import pytest

from tests.distributed.launch import REPO
from tests.infer.tiny_pipeline import read_video

pytestmark = pytest.mark.slow

TRAINING_ONLY = ("deepspeed", "peft", "webdataset", "tensorboard", "diffusers")


def run(cmd, **kwargs) -> str:
    proc = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, timeout=1500, **kwargs)
    assert proc.returncode == 0, f"{cmd}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc.stdout


def fresh_base_install(tmp_path):
    """A new venv holding torch and megavg's base install only; returns its python."""
    src = tmp_path / "src"  # a copy: building a wheel must not write into the work tree
    shutil.copytree(REPO / "megavg", src / "megavg", ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.py", "pyproject.toml"):
        shutil.copy2(REPO / name, src / name)
    venv.create(tmp_path / "env", with_pip=False)  # this interpreter's pip installs into it (--python)
    py = tmp_path / "env" / "bin" / "python"
    pip = [sys.executable, "-m", "pip", "--python", py]
    version = run([sys.executable, "-c", "import torch; print(torch.__version__.split('+')[0])"]).strip()
    run([*pip, "install", "-q", "--no-compile", f"torch=={version}"])  # the local wheel: no download
    run([*pip, "install", "-q", "--no-compile", "--no-build-isolation", src])
    installed = {line.split("==")[0].lower() for line in run([*pip, "freeze"]).splitlines()}
    assert not installed & set(TRAINING_ONLY), sorted(installed & set(TRAINING_ONLY))
    return py


def test_base_install_exports_and_generates(tmp_path):
    py = fresh_base_install(tmp_path)
    work = tmp_path / "work"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env.update(HF_HUB_OFFLINE="1", OMP_NUM_THREADS="1")
    shutil.copy2(REPO / "tests" / "infer" / "tiny_pipeline.py", work / "tiny_pipeline.py")
    run([py, work / "tiny_pipeline.py", work], cwd=work, env=env)
    for kind, extra in (("t2v", []), ("i2v", ["--image-encoder", work / "clip"])):
        run([py, REPO / "tools" / "export_pipeline.py", "--transformer", work / kind, "--vae", work / "vae",
             "--text-encoder", work / "text", *extra, "--out", work / f"pipe_{kind}", "--dtype", "fp32",
             "--steps", "2"], cwd=work, env=env)  # fmt: skip
    common = [
        "--prompt",
        "a red fox",
        "--dtype",
        "fp32",
        "--size",
        "32",
        "48",
        "--frames",
        "8",
        "--no-progress",
    ]
    run([py, "-m", "megavg.infer.generate", work / "pipe_t2v", *common, "--out", work / "t2v.mp4"],
        cwd=work, env=env)  # fmt: skip
    run([py, "-m", "megavg.infer.generate", work / "pipe_i2v", *common, "--image", work / "first.png",
         "--out", work / "i2v.mp4"], cwd=work, env=env)  # fmt: skip
    assert read_video(work / "t2v.mp4").shape == (8, 32, 48, 3)
    assert read_video(work / "i2v.mp4").shape == (8, 32, 44, 3)  # a 30x40 (HxW) image at the 32x48 area
