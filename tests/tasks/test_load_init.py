"""``model.init`` through a task's build (one process, no ZeRO): each tensor read whole, one at a time,
equal to the folder; a NaN is one error naming the tensor."""

import pytest
import torch
from safetensors.torch import save_file

import megavg.models
from megavg.models import registry
from megavg.tasks import build_task
from megavg.train.config import load_config
from megavg.utils.errors import UserError


def build(folder):
    cfg = load_config(None, ["task.name=flow_matching", f"model.init={folder}"])
    return build_task(cfg).build_model()


def test_model_init_loaded_exactly_and_nan_refused(tmp_path):
    torch.manual_seed(0)
    megavg.models.build("wan-tiny-t2v").save(tmp_path / "m")
    state = registry.load_state_dict(tmp_path / "m")
    model = build(tmp_path / "m")
    assert all(torch.equal(model.state_dict()[k], v) for k, v in state.items())
    state["blocks.1.ffn.fc1.weight"][3, 2] = float("nan")
    save_file(state, str(tmp_path / "m" / registry.WEIGHTS_NAME))
    with pytest.raises(UserError, match="blocks.1.ffn.fc1.weight contains NaN or Inf"):
        build(tmp_path / "m")
