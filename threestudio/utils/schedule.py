"""Scalar schedules: any config scalar may change with the training step."""
from __future__ import annotations

from typing import Any, Sequence, Union

from omegaconf import ListConfig

Number = Union[int, float]


def _as_list(value: Any) -> list:
    return list(value) if isinstance(value, (list, tuple, ListConfig)) else []


def schedule_value(value: Any, epoch: int, global_step: int) -> float:
    """Evaluate a schedulable scalar at the current step.

    Accepted forms:
    - a number: constant;
    - `[start_value, end_value, end_step]`: linear from step 0;
    - `[start_step, start_value, end_value, end_step]`: linear between the two steps, clamped;
    - `[start_step, v0, v1, s1, v2, s2, ...]`: piecewise linear through (start_step, v0), (s1, v1), (s2, v2)...
      e.g. `[0, 0.98, 0.5, 5000, 0.02, 8000]`.
    An integer step counts optimisation steps; a float step (e.g. `2.0`) counts epochs.
    """
    items = _as_list(value)
    if not items:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"A schedulable scalar must be a number or a list, got {value!r}.")
        return value
    if len(items) == 3:
        items = [0] + items
    if len(items) < 4 or len(items) % 2 != 0:
        raise ValueError(
            f"Schedule {items!r} must be [start_step, start_value, end_value, end_step] "
            "or [start_step, v0, v1, s1, v2, s2, ...]."
        )
    points = [(items[0], items[1])] + [(items[i + 1], items[i]) for i in range(2, len(items), 2)]
    current = epoch if isinstance(points[-1][0], float) else global_step
    if current <= points[0][0]:
        return points[0][1]
    for (s0, v0), (s1, v1) in zip(points[:-1], points[1:]):
        if current < s1:
            t = (current - s0) / max(s1 - s0, 1e-12)
            return v0 + (v1 - v0) * t
    return points[-1][1]


# threestudio spelling
C = schedule_value


def milestone_value(values: Sequence[Any], milestones: Sequence[int], step: int) -> Any:
    """Pick `values[i]` where i is the number of milestones already reached at `step`."""
    values = list(values)
    if len(values) != len(milestones) + 1:
        raise ValueError(
            f"{len(values)} values need {len(values) - 1} milestones, got {len(milestones)}: {list(milestones)}."
        )
    index = sum(step >= m for m in milestones)
    return values[index]


def validate_schedule(value: Any, where: str) -> None:
    """Check a schedulable scalar up front; the error names the config key `where` (e.g. system.loss.lambda_sds)."""
    from threestudio.utils.config import ConfigError

    items = _as_list(value)
    for item in items or [value]:
        if isinstance(item, bool) or not isinstance(item, (int, float)) or item != item or abs(item) == float("inf"):
            raise ConfigError(f"{where}: {value!r} is not a number or a schedule of numbers "
                              "([start_step, start_value, end_value, end_step]).")
    try:
        schedule_value(value, 0, 0)
    except ValueError as e:
        raise ConfigError(f"{where}: {e}") from None
    if items:
        full = [0] + items if len(items) == 3 else items
        steps = [full[0]] + full[3::2]
        if any(b < a for a, b in zip(steps[:-1], steps[1:])):
            raise ConfigError(f"{where}: the steps of schedule {items!r} ({steps}) must not decrease.")
