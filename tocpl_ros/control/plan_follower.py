"""A fast control loop following the newest MPC plan, with the policy as its fallback (ROS-free).

The MPC (``mpc_node``, 100 Hz) publishes each solve's plan on ``/mpc/plan``; the fast loop (the
policy node, 500 Hz / 1 kHz) applies it between solves, as MPC runs on real arms (a slow planner,
a fast loop applying its plan with feedback; agimus-controller's linear feedback controller):

    u = ū_k − K_k (x − x̄(t)),   k = floor(age / dt),   age = stamp(x) − stamp(plan)

- ``stamp(plan)`` is the header stamp of the joint state the solve started from and ``stamp(x)``
  the one of the state the fast loop holds now: both are the robot's own clock, so the age needs
  no clock shared between the two processes (nor machines);
- ū_k, K_k are held over step k (the OCP's zero-order hold, dt = the task's step); x̄(t) is
  interpolated linearly between x̄_k and x̄_{k+1}, so the nominal motion within a step is not
  taken for a deviation. K is Crocoddyl's: its forward pass applies u = ū − K (x ⊖ x̄), K in the
  tangent space (2 nv columns). x and x̄ here are joint positions (one per joint, /joint_states'
  coordinates) and velocities, 2 nv values, also for a robot with continuous joints (whose model
  q has cos θ, sin θ): ⊖ is − except on a continuous joint's position, whose difference is wrapped
  to [−π, π] (the short way round), which is what pin.difference gives on the model's q;
- the plan is *unusable* (and the policy's command is used) when: none was received yet; its
  state is older than ``max_age`` (or ahead by more), or the age is beyond the steps it carries;
  the newest report of the MPC is a failure (not converged, non-finite, error; a solve that
  missed its deadline only means that no new plan came: the previous one is followed while not
  older than ``max_age``); it was solved for another target than the loop's (``target_tolerance``);
  its reference posture x̄(t) is more than ``max_deviation`` from the measured one (the linear law is
  not trusted that far: a reset, a push); its command is not finite. A message with NaN/Inf, wrong sizes or an unknown layout is rejected
  whole (counted by reason) and never replaces the plan held;
- at every switch (plan → policy, policy → plan) the command is continuous: the difference d
  between the last command and the new source's is carried and removed linearly over
  ``blend_periods`` ticks, so the step at a switch is d / blend_periods (plus the new source's own
  change) and the new source's command is reached exactly ``blend_periods`` ticks after the switch;
  the offset is a convex combination of two commands inside the torque limits, so it stays inside.

:class:`PlanFollower` counts plan ticks, policy ticks by reason, switches and the largest
difference / step at a switch (``diagnostics()``) and keeps a log line per switch (``events``).
The ``/mpc/plan`` layout is :mod:`tocpl_ros.control.plan`'s.

Only numpy: no rclpy, no Crocoddyl.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass

import numpy as np

from tocpl_ros.config import FieldError
from tocpl_ros.control.plan import Plan, PlanError, decode_plan

__all__ = ["PlanFollower", "PlanFollowerConfig"]

def wrap_angles(d: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``d`` with its ``mask`` entries wrapped to [−π, π] in place (a continuous joint's position
    difference the short way round, as pin.difference); returns ``d``. Here and not in
    tocpl_ros.robot: this module stays free of Pinocchio."""
    d[mask] = np.arctan2(np.sin(d[mask]), np.cos(d[mask]))
    return d


@dataclass
class PlanFollowerConfig:
    """Settings of the plan following (the policy node's ``mpc_*`` parameters)."""

    max_age: float = 0.2
    """The plan is followed while the state of the fast loop is at most this much later (s, joint
    state stamps) than the state the plan was solved from; older, and on every other reason, the
    policy's command. Its feedback keeps an older plan a good law (the nominal motion and its gains
    for the next steps), so a late or skipped solve costs nothing; what bounds it is how long the
    loop may go on once the MPC is gone (mpc_node's plans cover 0.3 s)."""
    blend_periods: int = 3
    """Fast-loop periods over which each switch (plan ↔ policy) is blended: the new source's command
    is reached on the blend_periods-th tick after the switch, each step of the blend is 1/blend_periods
    of the difference at the switch (plus the new source's own change). 1: no blend."""
    target_tolerance: float = 0.001
    """A plan solved for a target farther than this (m) from the loop's target is not followed (a
    pose target: the norm over its 9 values, whose rotation columns differ by about the angle, rad)."""
    max_deviation: float = 0.1
    """A plan whose reference posture x̄(t) is farther than this (rad, any joint) from the measured
    one is not followed: its feedback law is a linearisation around x̄ (a reset or a push of the arm
    makes it extrapolate far, saturating torques until the next plan)."""

    def __post_init__(self) -> None:
        for name in ("max_age", "target_tolerance", "max_deviation"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not value > 0:
                raise FieldError(name, f"must be a finite number > 0, got {value!r}")
        b = self.blend_periods
        if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= 1000:
            raise FieldError("blend_periods", f"must be an integer in [1, 1000], got {b!r}")


class PlanFollower:
    """Holds the newest MPC plan and gives the fast loop's torque (see the module docstring).

    ``u_lo``/``u_hi``: torque limits (the plan's command is clamped to them). Not thread-safe:
    the node calls it under its lock."""

    def __init__(self, nu: int, nx: int, target_dim: int, config: PlanFollowerConfig | None = None,
                 u_lo: np.ndarray | None = None, u_hi: np.ndarray | None = None,
                 continuous: np.ndarray | None = None):
        self.nu, self.nx, self.target_dim = int(nu), int(nx), int(target_dim)
        # per joint (nx / 2): a continuous joint's position differences are wrapped (see the module docstring)
        mask = np.zeros(self.nx, dtype=bool)
        if continuous is not None:
            mask[: self.nx // 2] = np.asarray(continuous, dtype=bool)
        self._wrap = mask if mask.any() else None
        self.config = config or PlanFollowerConfig()
        self.u_lo = np.full(self.nu, -np.inf) if u_lo is None else np.asarray(u_lo, dtype=float)
        self.u_hi = np.full(self.nu, np.inf) if u_hi is None else np.asarray(u_hi, dtype=float)
        self.plan: Plan | None = None
        """The plan held (the newest converged one, until a failure report drops it)."""
        self.failure: str = ""
        """Status of the newest report if it was a failure that dropped the plan ('' otherwise)."""
        self.source: str | None = None
        """'plan' or 'policy': where the last command came from (None: none yet / interrupted)."""
        self.reason = "no MPC plan received yet"
        """Why the policy is used ('' while following the plan)."""
        self.counts: Counter = Counter()
        self.events: list[str] = []
        """One line per switch, for the node to log (it empties the list)."""
        self.ages: list[float] = []
        """Plan ages (s) at the ticks that followed it, since the last diagnostics()."""
        self.switch_difference_max = 0.0
        """Largest |last command − new source's command| (N·m, any joint) at a switch."""
        self.blend_step_max = 0.0
        """Largest change of the command (N·m, any joint) from one tick to the next during a blend."""
        self.stale_lag_max = 0.0
        """Largest time (s, joint-state stamps) from a plan's going stale (max_age) to the tick that
        switched to the policy because of it (at most one joint-state period when every state is seen)."""
        self._age = math.nan
        self._newest_stamp: float | None = None
        self._state_stamp: float | None = None
        self._last: np.ndarray | None = None
        self._offset: np.ndarray | None = None
        self._blend_left = 0

    # ------------------------------------------------------------------ plans in

    def offer(self, data) -> str | None:
        """Take a ``/mpc/plan`` message (the flat array, or a :class:`Plan`). Returns None if taken,
        else why not (counted in ``rejected.<key>``); never raises."""
        self.counts["plans_received"] += 1
        try:
            plan = data if isinstance(data, Plan) else decode_plan(data, self.nu, self.nx, self.target_dim)
        except PlanError as exc:
            self.counts[f"rejected.{exc.key}"] += 1
            return f"/mpc/plan rejected ({exc.key}): {exc}"
        except Exception as exc:  # never let a message escape
            self.counts["rejected.malformed"] += 1
            return f"/mpc/plan rejected (malformed): {type(exc).__name__}: {exc}"
        if not math.isfinite(plan.stamp):
            self.counts["rejected.nonfinite"] += 1
            return "/mpc/plan rejected (nonfinite): its stamp is not finite"
        newest = self._newest_stamp
        # (unless the joint states' clock went back since: the newest is then ahead of the loop's states)
        plausible = self._state_stamp is None or newest is None or newest <= self._state_stamp + self.config.max_age
        if newest is not None and plan.stamp < newest and plausible:
            self.counts["rejected.out_of_order"] += 1
            return f"/mpc/plan rejected (out_of_order): stamp {plan.stamp:.6f} older than the newest taken ({newest:.6f})"
        self._newest_stamp = plan.stamp
        if plan.ok:
            self.counts["plans_accepted"] += 1
            self.plan, self.failure = plan, ""
            return None
        self.counts[f"mpc_reported.{plan.status}"] += 1
        if plan.status != "deadline":  # a late solve: no new plan, the old one ages
            self.plan, self.failure = None, plan.status
        return None

    # ------------------------------------------------------------------ commands out

    def plan_command(self, stamp: float | None, x: np.ndarray, target: np.ndarray | None) -> tuple[np.ndarray | None, str, str]:
        """(u, '', '') of the plan held at the state ``x`` stamped ``stamp``, else (None, reason key,
        message)."""
        plan = self.plan
        if plan is None:
            if self.failure:
                return None, "mpc_failed", f"the MPC's newest solve failed ({self.failure})"
            return None, "no_plan", "no MPC plan received yet"
        if stamp is None or not math.isfinite(stamp):
            return None, "no_state", "no joint state stamp"
        age = stamp - plan.stamp
        self._age = age
        cfg = self.config
        if age > cfg.max_age:
            return None, "plan_old", f"the MPC plan is {age * 1e3:.1f} ms old (limit {cfg.max_age * 1e3:g} ms)"
        if age < -cfg.max_age:
            return None, "plan_ahead", f"the MPC plan is {-age * 1e3:.1f} ms ahead of the joint states (limit {cfg.max_age * 1e3:g} ms)"
        if age / plan.dt + 1e-6 >= plan.steps:
            return None, "beyond_horizon", f"the MPC plan covers {plan.steps * plan.dt * 1e3:g} ms, its state is {age * 1e3:.1f} ms old"
        if self.target_dim:
            if target is None:
                return None, "target_mismatch", "no target"
            gap = float(np.linalg.norm(np.asarray(target, dtype=float) - plan.target))
            if not gap <= cfg.target_tolerance:
                return None, "target_mismatch", (f"the MPC plan is for another target ({gap * 1e3:.1f} mm away, "
                                                 f"tolerance {cfg.target_tolerance * 1e3:g} mm)")
        a = max(age, 0.0) / plan.dt
        k = min(int(a + 1e-6), plan.steps - 1)  # (a step boundary computed from stamps: 0.06 / 0.02 = 2.99..)
        w = min(max(a - k, 0.0), 1.0)
        x = np.asarray(x, dtype=float)
        if x.shape != (self.nx,):
            return None, "no_state", f"state of size {x.size}, the plan's is {self.nx}"
        if self._wrap is None:
            x_ref = (1.0 - w) * plan.x_bar[k] + w * plan.x_bar[k + 1]
            deviation = x - x_ref
        else:  # interpolated and compared the short way round (a plan may cross ±π)
            x_ref = plan.x_bar[k] + w * wrap_angles(plan.x_bar[k + 1] - plan.x_bar[k], self._wrap)
            deviation = wrap_angles(x - x_ref, self._wrap)
        far = float(np.abs(deviation[: self.nx // 2]).max())
        if not far <= cfg.max_deviation:
            return None, "deviation", (f"the arm is {far:.3f} rad from the MPC plan's posture (limit "
                                       f"{cfg.max_deviation:g} rad)")
        u = plan.u_bar[k] - plan.K[k] @ deviation
        if not np.isfinite(u).all():
            return None, "nonfinite", "the plan's feedback law gave NaN/Inf"
        self.ages.append(age)
        if len(self.ages) > 20000:
            del self.ages[:10000]
        return np.clip(u, self.u_lo, self.u_hi), "", ""

    def command(self, stamp: float | None, x: np.ndarray, target: np.ndarray | None,
                u_policy: np.ndarray | None) -> np.ndarray | None:
        """The torque for this tick: the plan's if usable, else ``u_policy`` (None: the policy has
        no finite command), blended at a switch; None if neither gives one. Never raises."""
        if stamp is not None and math.isfinite(stamp):
            self._state_stamp = stamp
        try:
            u_plan, key, message = self.plan_command(stamp, x, target)
        except Exception as exc:  # never let a bug stop the commands: the policy
            u_plan, key, message = None, "error", f"following the plan failed: {type(exc).__name__}: {exc}"
        if u_plan is not None:
            want, new = "plan", u_plan
        else:
            want, new = "policy", None
            if u_policy is not None:
                new = np.clip(np.asarray(u_policy, dtype=float), self.u_lo, self.u_hi)
                if new.shape != (self.nu,) or not np.isfinite(new).all():
                    new = None
            self.counts[f"fallback.{key}"] += 1
        if new is None:  # no command from either: the caller's safe command; no blend from it
            self.counts["no_command_ticks"] += 1
            self.reason = message
            self.interrupt()
            return None
        if self.source is not None and want != self.source and self._last is not None:
            offset = self._last - new
            self._offset, self._blend_left = offset, self.config.blend_periods
            difference = float(np.abs(offset).max())
            self.switch_difference_max = max(self.switch_difference_max, difference)
            self.counts[f"switches_to_{want}"] += 1
            if key == "plan_old":  # how far past max_age (joint-state time) the switch came
                self.stale_lag_max = max(self.stale_lag_max, self._age - self.config.max_age)
            self.events.append(
                f"MPC: switched to the {'MPC plan' if want == 'plan' else 'policy'}"
                + (f" ({message})" if want == "policy" else "")
                + f"; command difference {difference:.3g} N·m, blended over {self.config.blend_periods} periods"
            )
            if len(self.events) > 100:
                del self.events[:50]
        self.source = want
        self.reason = message if want == "policy" else ""
        self.counts[f"{want}_ticks"] += 1
        u = new
        if self._blend_left > 0 and self._offset is not None:
            self._blend_left -= 1
            u = new + (self._blend_left / self.config.blend_periods) * self._offset
            self.counts["blend_ticks"] += 1
            if self._last is not None:
                self.blend_step_max = max(self.blend_step_max, float(np.abs(u - self._last).max()))
            if self._blend_left == 0:
                self._offset = None
        u = np.clip(u, self.u_lo, self.u_hi)
        self._last = u
        return u

    def interrupt(self) -> None:
        """The loop sent another command (its safe command): the next one starts without a blend
        (the loop's own fade-in ramps from its safe command)."""
        self.source = None
        self._last = None
        self._offset = None
        self._blend_left = 0

    # ------------------------------------------------------------------ reporting

    def diagnostics(self, prefix: str = "mpc_") -> dict[str, str]:
        """Flat key → value strings (plan ages of the window since the last call)."""
        c = self.counts
        ages = np.array(self.ages) if self.ages else np.array([math.nan])
        self.ages.clear()
        plan = self.plan
        out = {
            "source": self.source or "none",
            "reason": self.reason,
            "plan_ticks": str(c["plan_ticks"]),
            "policy_ticks": str(c["policy_ticks"]),
            "blend_ticks": str(c["blend_ticks"]),
            "switches_to_policy": str(c["switches_to_policy"]),
            "switches_to_plan": str(c["switches_to_plan"]),
            "switch_difference_max": f"{self.switch_difference_max:.4g}",
            "blend_step_max": f"{self.blend_step_max:.4g}",
            "stale_lag_max_ms": f"{self.stale_lag_max * 1e3:.3f}",
            "plans_received": str(c["plans_received"]),
            "plans_accepted": str(c["plans_accepted"]),
            "plan_age_p50_ms": f"{np.nanpercentile(ages, 50) * 1e3:.2f}" if np.isfinite(ages).any() else "nan",
            "plan_age_max_ms": f"{np.nanmax(ages) * 1e3:.2f}" if np.isfinite(ages).any() else "nan",
            "max_age_ms": f"{self.config.max_age * 1e3:g}",
            "blend_periods": str(self.config.blend_periods),
            "plan_iterations": "none" if plan is None else str(plan.iterations),
            "plan_warm_start": "none" if plan is None else plan.warm_start,
        }
        for key, count in sorted(c.items()):
            if "." in key:
                out[key] = str(count)
        return {prefix + k: v for k, v in out.items()}
