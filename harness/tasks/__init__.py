"""Tasks: what a track's model does and how it is trained and scored.

A :class:`Task` gives the protocol everything task-specific (base model, example
inputs, what never gets pruned, calibration batches and loss for observations,
training, evaluation, saving), so that the protocol itself is one code path for
classification and detection. Registered lazily by the track's ``metric``.
"""

from __future__ import annotations

from harness.registry import Registry, resolve
from harness.tasks.base import Task

TASKS: Registry[str] = Registry("task")
TASKS.register("top1", "harness.tasks.classification:ClassificationTask")
TASKS.register("map50_95", "harness.tasks.detection:DetectionTask")


def task_for(track, **kwargs) -> Task:
    return resolve(TASKS.get(track.metric))(track, **kwargs)


__all__ = ["TASKS", "Task", "task_for"]
