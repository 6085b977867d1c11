"""DC-AE-V presets: the five released architectures and small ones of the same design for tests/demos.

All follow the released design: project-in conv + pixel-unshuffle x2; stage 0 empty; spatial x2
downsamples, then one temporal x4 downsample; the last stage runs at latent frame rate. Chunk length
``chunk`` frames before the temporal downsample, ``chunk // 4`` latent frames after it.
"""

from __future__ import annotations

from megavg.models.dcaev.args import SHUFFLE_BLOCK, UNSHUFFLE_BLOCK, Args, DecoderArgs, EncoderArgs

RELEASED_WIDTHS = (128, 256, 512, 512, 1024, 1024, 1024)
RELEASED_DEPTHS = (0, 5, 10, 4, 4, 4, 4)


def chunk_causal_design(latent: int, widths: tuple[int, ...], depths: tuple[int, ...], chunk: int,
                        scaling_factor: float) -> Args:  # fmt: skip
    """Block strings of the released design for ``len(widths)`` stages (spatial x2 per stage transition
    except the last, which is temporal x4)."""
    n, lat = len(widths), chunk // 4
    blocks = tuple(f"ChunkCausalResBlock3d@3@3@{chunk if i < n - 1 else lat}" for i in range(n))
    spatial = (f"@2@1@3@3@{chunk}",) * (n - 2)
    encoder = EncoderArgs(
        width_list=widths,
        depth_list=depths,
        block_type=blocks,
        downsample_block_type=tuple(f"{UNSHUFFLE_BLOCK}{f}" for f in (*spatial, f"@1@4@3@3@{chunk}")),
        project_in_block_type=f"ChunkCausalConvPixelUnshuffle@2@1@3@3@{chunk}",
        project_out_block_type=f"ChunkCausalConvLayer3d@3@3@{lat}",
    )
    decoder = DecoderArgs(
        width_list=widths,
        depth_list=depths,
        block_type=blocks,
        upsample_block_type=tuple(f"{SHUFFLE_BLOCK}{f}" for f in (*spatial, f"@1@4@3@3@{lat}")),
        project_in_block_type=f"ChunkCausalConvLayer3d@3@3@{lat}",
        project_out_block_type=f"ChunkCausalConvPixelShuffle@2@1@3@3@{chunk}",
    )
    return Args(latent_channels=latent, encoder=encoder, decoder=decoder, scaling_factor=scaling_factor)


def _released(latent: int, scaling_factor: float, extra_stages: int = 0) -> Args:
    widths = RELEASED_WIDTHS + (1024,) * extra_stages
    depths = RELEASED_DEPTHS + (4,) * extra_stages
    return chunk_causal_design(latent, widths, depths, 40, scaling_factor)


PRESETS: dict[str, Args] = {
    "dc-ae-v-f32t4c32": _released(32, 0.7241),
    "dc-ae-v-f32t4c64": _released(64, 0.7614),
    "dc-ae-v-f32t4c128": _released(128, 0.4457),
    "dc-ae-v-f32t4c256": _released(256, 0.4752),
    "dc-ae-v-f64t4c128": _released(128, 0.4752, extra_stages=1),
    # f4t4c4, chunk 8 frames / 2 latent frames: unit tests
    "dc-ae-v-tiny": chunk_causal_design(4, (8, 16, 32, 32), (0, 1, 1, 1), 8, 1.0),
    # f8t4c16, chunk 8 frames: CPU training demo (e.g. 16 frames 64x64 on 2 processes)
    "dc-ae-v-small": chunk_causal_design(16, (16, 32, 64, 64, 64), (0, 1, 1, 1, 1), 8, 1.0),
    # the miniature reproduction (docs/reproduction.md), 16-frame clips in one chunk: the base model's
    # VAE at Wan-2.1's compression (f8t4c16) and a deeper-compression one (f16t4c32; an f32 model did not
    # learn the objects of 64x64 clips from a 2x2 latent grid within the run's budget)
    "dc-ae-v-mini-f8t4c16": chunk_causal_design(16, (16, 32, 64, 64, 64), (0, 1, 1, 1, 1), 16, 1.0),
    "dc-ae-v-mini-f16t4c32": chunk_causal_design(32, (16, 32, 64, 64, 64, 64), (0, 1, 1, 1, 1, 1), 16, 1.0),
}
