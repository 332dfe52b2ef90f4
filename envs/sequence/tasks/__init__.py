"""The registry of sequence tasks: ``TASKS`` maps a task name to its class; ``make_task``."""

from __future__ import annotations

from toy_entropy.envs.sequence.task import SequenceTask
from toy_entropy.envs.sequence.tasks.addition import AdditionTask
from toy_entropy.envs.sequence.tasks.countdown import CountdownTask
from toy_entropy.envs.sequence.tasks.fork import ForkTask
from toy_entropy.envs.sequence.tasks.hard_prompt import HardPromptTask
from toy_entropy.envs.sequence.tasks.lists import ListTask, ReverseTask, SortTask

TASKS: dict[str, type[SequenceTask]] = {
    task.name: task
    for task in (CountdownTask, AdditionTask, ReverseTask, SortTask, HardPromptTask, ForkTask)
}


def make_task(name: str, **kwargs) -> SequenceTask:
    """Build the task ``name`` (one of ``TASKS``) with its keyword arguments."""
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)}")
    return TASKS[name](**kwargs)


__all__ = [
    "TASKS",
    "AdditionTask",
    "CountdownTask",
    "ForkTask",
    "HardPromptTask",
    "ListTask",
    "ReverseTask",
    "SortTask",
    "make_task",
]
