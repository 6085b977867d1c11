"""DC-AE-V video autoencoder family (DESIGN.md §2-4): ``Args``, ``Model``, ``PRESETS``.

model = megavg.models.build("dc-ae-v-f32t4c32")        # or load(folder), or Model(Args(...))
z = model.encode(video)                               # B,3,T,H,W in [-1,1] -> unscaled latent
video = model.decode(z)
"""

from megavg.models.dcaev.args import Args, DecoderArgs, EncoderArgs
from megavg.models.dcaev.model import Model
from megavg.models.dcaev.presets import PRESETS

FAMILY = "dcaev"

__all__ = ["FAMILY", "Args", "EncoderArgs", "DecoderArgs", "Model", "PRESETS"]
