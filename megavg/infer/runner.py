"""The DC-VideoGen pipeline object: open a pipeline folder once, generate videos from Python.

    import megavg

    pipe = megavg.Pipeline.from_pretrained("pipelines/t2v", device="cuda", dtype="bf16")
    frames = pipe("a red fox running through snow", size=(704, 1280), frames=80, steps=50, seed=0)
    pipe.save(frames, "fox.mp4")  # frames: uint8 numpy [T, H, W, 3]

The folder is a megavg pipeline (``tools/export_pipeline.py``) or the released DC-VideoGen-Wan2.1-14B
folder (:mod:`megavg.infer.pipeline`). ``python -m megavg.infer.generate`` is a command line over this
object: for the same arguments the frames returned here are the frames it writes.
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from megavg.infer import stages as st
from megavg.infer.distributed import Layout
from megavg.infer.pipeline import PipelineFolder, open_pipeline
from megavg.infer.request import (
    DEFAULT_FRAMES,
    DEFAULT_SIZE,
    Request,
    check_device,
    image_from_array,
    load_image,
    make_request,
)
from megavg.infer.stage_log import StageLog
from megavg.infer.video_io import VideoWriter, check_output
from megavg.utils.errors import UserError
from megavg.utils.logging import get_logger

log = get_logger("megavg.infer.generate")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def as_dtype(dtype: str | torch.dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype not in DTYPES:
        raise UserError(f"--dtype {dtype}: choose from {', '.join(sorted(DTYPES))}")
    return DTYPES[dtype]


class Pipeline:
    """Text-to-video and image-to-video with a DC-VideoGen pipeline folder on one device.

    Build it with :meth:`from_pretrained` (reads the folder's configs, no weights); models load at the
    first call. ``keep_loaded`` keeps them for the next calls (False: each is freed as soon as its stage
    is done, the memory profile of one ``generate`` run). ``offload`` keeps every model on the CPU except
    while its stage runs. After a call, ``last_run`` holds the stage table and sampler timings.
    """

    def __init__(
        self, folder: PipelineFolder, device: torch.device, dtype: torch.dtype, offload: bool = False,
        keep_loaded: bool = True,
    ):  # fmt: skip
        self.folder, self.device, self.dtype = folder, device, dtype
        self.offload, self.keep_loaded = offload, keep_loaded
        self._loaded: dict[str, object] = {}  # "text", "image", "vae", "t2v" / "i2v" (the DiT)
        self.last_run: dict | None = None

    @classmethod
    def from_pretrained(
        cls,
        folder: str | os.PathLike,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype = "bf16",
        offload: bool = False,
        keep_loaded: bool = True,
    ) -> Pipeline:
        """Open ``folder`` (a megavg pipeline or the released DC-VideoGen folder); ``device`` defaults to
        CUDA when available, ``dtype`` (``"bf16"``, ``"fp32"``, ``"fp16"`` or a torch dtype) is that of
        the DiT, DC-AE-V and umT5 (CLIP runs in fp32). Bad folders and devices raise UserError."""
        pipe = open_pipeline(folder)
        device = check_device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        return cls(pipe, device, as_dtype(dtype), offload, keep_loaded)

    # ---- requests --------------------------------------------------------------------------------------
    def request(self, prompt: str, image=None, **kwargs) -> Request:
        """A checked :class:`~megavg.infer.request.Request` (no weight read); ``image``: a file path, uint8
        pixels [H, W, 3], or a float tensor [1, 3, H, W] in [-1, 1] (:func:`~megavg.infer.request.load_image`
        makes those); ``kwargs`` as :func:`~megavg.infer.request.make_request`."""
        if isinstance(image, (str, os.PathLike)):
            image = load_image(image)
        elif image is not None and not (isinstance(image, torch.Tensor) and image.is_floating_point()):
            image = image_from_array(image)
        return make_request(self.folder, prompt, image, **kwargs)

    def __call__(
        self,
        prompt: str,
        image=None,
        *,
        negative_prompt: str | None = None,
        size: tuple[int, int] = DEFAULT_SIZE,
        frames: int = DEFAULT_FRAMES,
        steps: int | None = None,
        guidance: float | None = None,
        shift: float | None = None,
        solver: str | None = None,
        seed: int = 0,
        options: st.RunOptions | None = None,
    ) -> np.ndarray:
        """Generate one video; returns its frames, uint8 numpy [T, H, W, 3]. None means the pipeline's
        default (``pipeline.json``: steps 50, guidance 5.0, shift 5.0, UniPC for the release); an
        ``image`` (path or uint8 [H, W, 3]) makes it image-to-video, ``size`` then being the area."""
        req = self.request(prompt, image, negative_prompt=negative_prompt, size=size, frames=frames,
                           steps=steps, guidance=guidance, shift=shift, solver=solver)  # fmt: skip
        collector = st.FrameCollector()
        self.run(req, collector, seed, options)
        return collector.frames()

    def save(self, frames, path: str | os.PathLike, fps: int | None = None) -> Path:
        """Write uint8 frames [T, H, W, 3] to ``path`` (.mp4, .webm or .gif, atomically) at ``fps``
        (default: the pipeline's, 16)."""
        check_output(path, "path")
        with VideoWriter(path, fps or self.folder.manifest.sampler.fps) as writer:
            writer.write_frames(np.asarray(frames))
        return Path(path)

    # ---- the stages ------------------------------------------------------------------------------------
    def _get(self, key: str, load):
        model = self._loaded.get(key)
        if model is None:
            model = load()
            if self.keep_loaded:
                self._loaded[key] = model
        return model

    def _encoders(self, req: Request, place: st.Placement) -> st.Models:
        text = self._get("text", lambda: st.load_text_encoder(self.folder, place, self.dtype))
        image = None
        if req.image is not None:
            image = self._get("image", lambda: st.load_image_encoder(self.folder))
            image.to(place.home)
        vae = self._get("vae", lambda: self.folder.load_vae(dtype=self.dtype)).to(place.home)
        return st.Models(text, None, vae, image)  # the DiT comes after the encoders (_transformer)

    def _transformer(self, req: Request, place: st.Placement):
        kind = "t2v" if req.image is None else "i2v"
        self._loaded.pop("i2v" if kind == "t2v" else "t2v", None)  # one DiT at a time
        return self._get(kind, lambda: st.load_transformer(self.folder, req, place, self.dtype))

    def run(self, req: Request, writer, seed: int = 0, options: st.RunOptions | None = None,
            layout: Layout | None = None) -> dict:  # fmt: skip
        """Generate ``req`` into ``writer`` (``write(piece)`` of [1, 3, n, H, W] in [-1, 1]; None on ranks
        other than 0 of a multi-process ``layout``). Returns frames, size, the stage table (name,
        seconds, peak MiB), seconds per step, the latents and the sampler's timings; also ``last_run``."""
        options = options or st.RunOptions()
        layout = layout or Layout(device=self.device)
        device = layout.device
        place, stages = st.Placement(device, self.offload), StageLog(device)
        with stages.stage("load"):
            models = self._encoders(req, place)
        encoded = st.encode_inputs(models, req, place, stages)
        with stages.stage("load transformer"):
            models.dit = self._transformer(req, place).to(place.home)
        inputs = {k: v.to(device) if v is not None else None for k, v in encoded.items()}
        noise = st.initial_noise(models, req, seed).to(device)
        with stages.stage("denoise"), place.use(models.dit), torch.no_grad():
            latents, stats = st.denoise(models, req, inputs, noise, options, layout)
        models.dit = None
        latents = latents.float() / self.folder.manifest.scaling_factor
        with stages.stage("decode"), place.use(models.vae):
            frames = st.decode(models, latents, req, options.decode_tile, layout, writer)
        timing = {k: stats[k] for k in ("first_step_s", "step_s", "skipped", "calls", "mode")}
        self.last_run = {"frames": frames, "size": req.size, "stages": stages.rows, "stage_log": stages,
                         "seconds_per_step": stages.seconds("denoise") / req.steps, "latents": latents,
                         **timing}  # fmt: skip
        return self.last_run
