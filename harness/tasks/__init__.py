"""Tasks: what a track's model does and how it is trained and scored.

A :class:`Task` gives the protocol everything task-specific (base model, example
inputs, what never gets pruned, calibration batches and loss for observations,
training, evaluation, saving), so that the protocol itself is one code path for
classification and detection. Registered lazily by the track's ``metric``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Optional

from harness.registry import Registry
from harness.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task", of=Task, classes=True)
TASKS.register("top1", "harness.tasks.classification:ClassificationTask")
TASKS.register("map50_95", "harness.tasks.detection:DetectionTask")


def task_for(track, **kwargs) -> Task:
    return TASKS.get(track.metric)(track, **kwargs)


def base_sha256(track, data_root: Optional[Path] = None, cache_dir: Optional[Path] = None, device: str = "cpu",
                train: bool = True, progress=None, verify: bool = False) -> Optional[str]:
    """The sha256 of the base checkpoint runs of ``track`` start from, known before any run
    (:func:`harness.protocol.checkpoints.known_base_sha256`: the published file's, the cached trained
    file's, the pin unless ``verify``); with nothing known, ``train=True`` trains the base now (the task
    knows where its base is cached: detection has its own cache), ``None`` otherwise."""
    from harness.protocol.checkpoints import known_base_sha256
    digest = known_base_sha256(track, cache_dir, verify)
    if digest is not None or not train:
        return digest
    return task_for(track, data_root=data_root, cache_dir=cache_dir, device=device).base_model(progress).sha256


__all__ = ["TASKS", "Task", "base_sha256", "task_for"]
