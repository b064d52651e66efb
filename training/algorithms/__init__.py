"""One module per algorithm, all behind ``Algorithm`` (OC phase, supervised phase, dual update)."""

from __future__ import annotations

from tocpl_training.algorithms.base import Algorithm, OCBatch
from tocpl_training.algorithms.pddp import PDDP


def make_algorithm(task, policy, config, runner, counter) -> Algorithm:
    from tocpl_training.algorithms.plal import DPL, PLAL
    from tocpl_training.algorithms.pods import PODS

    classes = {"pddp": PDDP, "plal": PLAL, "pods": PODS, "dpl": DPL}
    return classes[config.algo](task, policy, config, runner, counter)


__all__ = ["Algorithm", "OCBatch", "PDDP", "make_algorithm"]
