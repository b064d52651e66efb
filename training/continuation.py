"""Training problems for continuous use: start where the policy's own use takes the arm.

The task's distribution P starts every problem at rest near the nominal posture, so the OC
labels only cover the first T of an episode. A controller in use meets other states: moving,
where an earlier motion left the arm, holding at a target, after drifting. A share of each OC
phase's problems is therefore started from the policy's own rollouts (as in DAgger): the
current policy runs through a chain of targets switched every T, one state is drawn on that
chain, and the problem asks to reach either the chain's current target from there (keep going,
keep holding) or a fresh one (a new target while moving); some of those states get a velocity
kick (a push while in use). A chain that leaves the joint limits is
not used (its problem stays one of P). Another share starts from P with
random joint velocities. The OC solution from such a state over the full horizon T is a
receding-horizon label: what an MPC of horizon T would do there, which a policy of the state
alone can represent at every time, T and beyond.
"""

from __future__ import annotations

import numpy as np

from tocpl_ros.tasks import DynamicsCounter, Problems, RobotTask, Task


def in_use_range(task: RobotTask, x: np.ndarray) -> np.ndarray:
    """Whether states [..., nx] are within the model's joint position and velocity limits (a limit
    <= 0, as a URDF without one gives, counts as none). A chain of an early policy that leaves them
    is not a state of use: labels from there only teach the network to saturate."""
    q, v = x[..., :task.nq], x[..., task.nq:]
    m = task.model
    v_max = np.where(m.velocityLimit > 0, m.velocityLimit, np.inf)
    lower_ok = np.all(q >= m.lowerPositionLimit, axis=-1) | np.all(m.lowerPositionLimit >= m.upperPositionLimit)
    upper_ok = np.all(q <= m.upperPositionLimit, axis=-1) | np.all(m.lowerPositionLimit >= m.upperPositionLimit)
    return lower_ok & upper_ok & np.all(np.abs(v) <= v_max, axis=-1)


def with_continuation(task: Task, policy, problems: Problems, rng: np.random.Generator, *,
                      share: float, chain: int, retarget: float, moving_share: float, start_speed: float,
                      kick: float = 0.0, counter: DynamicsCounter | None = None) -> Problems:
    """``problems`` with a ``share`` re-started on the policy's rollouts (a ``kick`` share of them with
    U(−start_speed, start_speed) added to the joint velocities) and a ``moving_share`` started with
    such velocities (robot tasks; others are returned as they are)."""
    if not isinstance(task, RobotTask) or len(problems) == 0:
        return problems
    n = len(problems)
    x0, target = problems.x0.copy(), problems.target.copy()
    order = rng.permutation(n)
    n_chain = int(round(share * n))
    n_moving = min(int(round(moving_share * n)), n - n_chain)
    chained, moving = order[:n_chain], order[n_chain:n_chain + n_moving]

    if n_chain:
        starts = task.sample(n_chain, rng)
        when = rng.integers(0, chain * task.horizon, n_chain)  # the drawn state's time on its chain
        segment_targets = [starts.target] + [task.sample(n_chain, rng).target for _ in range(chain - 1)]
        x, alive = starts.x0, np.ones(n_chain, dtype=bool)
        state, goal = starts.x0.copy(), starts.target.copy()
        for k, seg_target in enumerate(segment_targets):
            traj = task.rollout(policy, Problems(x, seg_target), counter=counter)
            alive &= ~traj.diverged & in_use_range(task, traj.xs).all(axis=1)
            here = (when // task.horizon == k) & alive
            state[here] = traj.xs[here, when[here] % task.horizon]
            goal[here] = seg_target[here]
            x = traj.xs[:, -1]
        # a fresh target for a share: the policy must take new targets while moving
        fresh = rng.random(n_chain) < retarget
        goal[fresh] = task.sample(int(fresh.sum()), rng).target if task.target_dim else goal[fresh]
        if kick > 0 and start_speed > 0:  # drawn only when asked: the default runs keep their random stream
            kicked = rng.random(n_chain) < kick
            state[kicked, task.nq:] += rng.uniform(-start_speed, start_speed, (int(kicked.sum()), task.nv))
        x0[chained], target[chained] = state, goal

    if n_moving and start_speed > 0:
        x0[moving, task.nq:] = rng.uniform(-start_speed, start_speed, (n_moving, task.nv))
    return Problems(x0, target)
