"""Data sources: synthetic probing tasks and real text. Each file registers its task by name."""

from archlab.registry import Registry
from archlab.tasks.base import Task, TaskConfig

TASKS: Registry[type[Task]] = Registry("task", default="text")


def register_task(name: str, config_cls: type[TaskConfig]):
    """Class decorator: ``@register_task("depo", DepoConfig)``."""

    def deco(cls: type[Task]) -> type[Task]:
        cls.config_cls = config_cls
        return TASKS.register(name, config_cls)(cls)

    return deco


def build_task(cfg: TaskConfig, seq_len: int) -> Task:
    _, cls = TASKS.get(cfg.name)
    return cls(cfg, seq_len)


# Importing the modules registers the tasks.
from archlab.tasks import text  # noqa: E402,F401
from archlab.tasks import brevo, capo, depo, lano, mano  # noqa: E402,F401

__all__ = ["TASKS", "Task", "TaskConfig", "register_task", "build_task"]
