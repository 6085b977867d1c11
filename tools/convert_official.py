"""Convert released weights into a megavg model folder.

    python tools/convert_official.py dcaev CHECKPOINT.pt --arch PRESET|ARCH.json --out FOLDER
    python tools/convert_official.py wan SOURCE --out FOLDER      # diffusers folder or original Wan layout
    python tools/convert_official.py wan22 SOURCE --out FOLDER    # Wan 2.2 A14B experts / TI2V-5B pipeline

Each family's converter lives next to its model (``megavg/models/<family>/state_dict_adapter.py``,
function ``convert_cli(argv)``). Bad input prints one ``error:`` line and exits 2.
"""

import importlib
import sys

from megavg.utils.errors import UserError, run_cli

CONVERTERS = {
    "dcaev": "megavg.models.dcaev.state_dict_adapter",
    "wan": "megavg.models.wan.state_dict_adapter",
    "wan22": "megavg.models.wan.experts",
}


def main(argv: list[str] | None = None) -> None:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] not in CONVERTERS:
        raise UserError(f"usage: convert_official.py {{{','.join(CONVERTERS)}}} SOURCE ... (see --help)")
    importlib.import_module(CONVERTERS[argv[0]]).convert_cli(argv[1:])


if __name__ == "__main__":
    run_cli(main)
