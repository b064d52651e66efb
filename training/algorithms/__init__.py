"""One module per algorithm, all behind ``Algorithm`` (OC phase, supervised phase, dual update)."""

from __future__ import annotations

from .base import Algorithm, OCBatch
from .pddp import PDDP


def make_algorithm(task, policy, config, runner, counter) -> Algorithm:
    from .plal import PLAL

    classes = {"pddp": PDDP, "plal": PLAL}
    return classes[config.algo](task, policy, config, runner, counter)


__all__ = ["Algorithm", "OCBatch", "PDDP", "make_algorithm"]
