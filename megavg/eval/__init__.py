"""Video evaluation: FVD (I3D features), reconstruction metrics, generation over prompt lists.

Command line: ``python -m megavg.eval`` (see :mod:`megavg.eval.__main__` and docs/evaluation.md).
"""

from megavg.eval.frechet import frechet_distance

__all__ = ["frechet_distance"]
