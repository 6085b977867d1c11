"""Turn video files into webdataset shards (see ``megavg/data/make_shards.py`` for the options).

python tools/make_shards.py INPUTS... --out DIR [--captions CSV] [--samples-per-shard N]
"""

from megavg.data.make_shards import main
from megavg.utils.errors import run_cli

if __name__ == "__main__":
    run_cli(main)
