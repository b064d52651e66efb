"""One module per algorithm, all behind ``Algorithm`` (OC phase, supervised phase, dual update)."""

from __future__ import annotations

from tocpl_ros.config import ConfigError
from tocpl_training.algorithms.base import Algorithm, OCBatch
from tocpl_training.algorithms.pddp import PDDP


def make_algorithm(task, policy, config, runner, counter) -> Algorithm:
    from tocpl_training.algorithms.plal import DPL, PLAL
    from tocpl_training.algorithms.pods import PODS

    classes = {"pddp": PDDP, "plal": PLAL, "pods": PODS, "dpl": DPL}
    if config.algo != "pddp" and task.nx != 2 * task.nu:
        # their terms inside the OCP (consensus, Newton step) take x and dx as one vector space
        raise ConfigError("algo", "algo", f"'{config.algo}' needs a state without continuous joints (nx = 2 nu); "
                                          f"task {task.name} has nx = {task.nx}, nu = {task.nu}: use pddp")
    return classes[config.algo](task, policy, config, runner, counter)


__all__ = ["Algorithm", "OCBatch", "PDDP", "make_algorithm"]
