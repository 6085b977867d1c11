"""Stand-in for ``transformer_engine.common`` (only the recipes)."""

from transformer_engine.common import recipe  # noqa: F401
