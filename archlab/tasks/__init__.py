"""Data sources: synthetic probing tasks and real text. Each file registers its task by name; importing the
package registers the built-in ones."""

from archlab.tasks import brevo, capo, depo, lano, mano, text  # noqa: F401  (register the tasks)
from archlab.tasks.base import TASKS, Task, TaskConfig, build_task, register_task

__all__ = ["TASKS", "Task", "TaskConfig", "register_task", "build_task"]
