"""Training objectives: one small module per task, found by name.

A task module exposes ``Args`` (a dataclass: the ``task.args`` section of the config) and ``Task``
(a :class:`megavg.tasks.base.Task` subclass). ``task.name`` is a registry name below or the dotted path
of any importable module following the same shape, so later recipes plug in without editing this file.
"""

from __future__ import annotations

import importlib
from types import ModuleType

from megavg.utils.errors import UserError

TASKS = {
    "adapt_align": "megavg.tasks.adapt_align",
    "adapt_lora": "megavg.tasks.adapt_lora",
    "dcaev_recon": "megavg.tasks.dcaev_recon",
    "flow_matching": "megavg.tasks.flow_matching",
}


def build_task(cfg):
    """The task object of a training config (``task.name`` with ``task.args`` checked by its schema)."""
    from megavg.utils.schema import from_dict

    module = task_module(cfg.task.name)
    return module.Task(from_dict(module.Args, cfg.task.args, "task.args"), cfg)


def task_module(name: str) -> ModuleType:
    """The module implementing task ``name`` (registry name or dotted module path)."""
    path = TASKS.get(name, name if "." in name else None)
    if path is None:
        raise UserError(f"config task.name: unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    try:
        module = importlib.import_module(path)
    except ModuleNotFoundError as err:
        raise UserError(f"config task.name: cannot import task module {path!r} ({err})") from None
    if not hasattr(module, "Task") or not hasattr(module, "Args"):
        raise UserError(f"config task.name: module {path!r} defines no Task and Args")
    return module
