"""``torch.load`` for files from outside: weights only, and a refusal that says what was refused.

megavg never unpickles code. A pickle that names a Python global beyond tensors and containers (a class,
a function such as ``posix.system``) is refused by ``torch.load(weights_only=True)``; torch's own message
opens with advice to retry with ``weights_only=False``, which would run that code. The error raised
here names the refused global and says why, instead.
"""

from __future__ import annotations

import pickle
import re
from pathlib import Path
from typing import Any

import torch

from megavg.utils.errors import UserError

# torch 2.x words it either way: "Unsupported global: GLOBAL a.B was not ..." / "unsupported GLOBAL a.b whose"
_GLOBAL_RE = re.compile(r"unsupported (?:global: )?GLOBAL (\S+)", re.IGNORECASE)
_REASON_RE = re.compile(r"WeightsUnpickler error:\s*(\S[^\n]*)")


def refusal_message(err: BaseException) -> str:
    """What a weights-only unpickler refused, from torch's message (without its advice)."""
    found = _GLOBAL_RE.search(str(err))
    what = f"the Python object {found.group(1)}" if found else "a Python object that is not a tensor"
    return (
        f"refused to unpickle {what}: megavg loads torch files with weights_only=True and never unpickles "
        "code (save plain tensors / state dicts, or convert the file to safetensors)"
    )


def _unpickler_reason(err: BaseException) -> str:
    """The weights-only unpickler's own reason (e.g. "Unsupported operand 110"), not torch's advice."""
    found = _REASON_RE.search(str(err))
    return found.group(1).strip() if found else first_line(err)


def first_line(err: BaseException) -> str:
    """The first sentence of an exception's message, after its type unless that is a RuntimeError/OSError."""
    text = str(err).strip()
    text = text.splitlines()[0].split(". ")[0] if text else ""
    if isinstance(err, (RuntimeError, OSError)) and text:
        return text
    return f"{type(err).__name__}: {text}" if text else type(err).__name__


def load_weights_only(path: str | Path, what: str = "not loadable with torch.load(weights_only=True)") -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)``; any failure is a :class:`UserError`
    naming ``path``: a refused global says so (see :func:`refusal_message`), a damaged file gives
    ``what`` and the first line of torch's reason."""
    path = Path(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        if _GLOBAL_RE.search(str(err)):
            raise UserError(f"{path}: {refusal_message(err)}") from None
        raise UserError(f"{path}: {what} ({_unpickler_reason(err)})") from None
    except (RuntimeError, OSError, EOFError, ValueError, KeyError, IndexError, TypeError) as err:
        raise UserError(f"{path}: {what} ({first_line(err)})") from None
