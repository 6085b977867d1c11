"""Model families, presets and the model folder format (``config.json`` + safetensors weights).

model = megavg.models.build("dc-ae-v-f32t4c32")      # preset name, args dataclass or config dict
with torch.device("meta"):
    big = megavg.models.build("wan2.1-t2v-14b")       # no memory allocated
model.save("out/dcaev"); again = megavg.models.load("out/dcaev")
"""

from megavg.models.registry import build, family_of, list_presets, load, preset_args, save

__all__ = ["build", "load", "save", "list_presets", "preset_args", "family_of"]
