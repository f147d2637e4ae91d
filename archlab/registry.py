"""Name -> (config class, implementation) registries for pluggable parts (mixers, tasks).

A part registers its own pydantic config class (with a ``name`` field) so that adding a mixer or a task
never touches a central file. ``Registry.validate`` turns a dict with ``name`` into the right config class.
"""

from __future__ import annotations

from typing import Any, Callable, Generic, TypeVar

from pydantic import BaseModel

T = TypeVar("T")


class Registry(Generic[T]):
    def __init__(self, kind: str, default: str):
        self.kind, self.default = kind, default
        self._entries: dict[str, tuple[type[BaseModel], T]] = {}

    def register(self, name: str, config_cls: type[BaseModel]) -> Callable[[T], T]:
        def deco(impl: T) -> T:
            if name in self._entries:
                raise ValueError(f"{self.kind} {name!r} is registered twice")
            self._entries[name] = (config_cls, impl)
            return impl

        return deco

    def names(self) -> list[str]:
        return sorted(self._entries)

    def get(self, name: str) -> tuple[type[BaseModel], T]:
        if name not in self._entries:
            raise ValueError(f"unknown {self.kind} {name!r}; known: {', '.join(self.names())}")
        return self._entries[name]

    def validate(self, value: Any) -> BaseModel:
        """dict / name / config instance -> the registered config class for its ``name`` (default if absent)."""
        if isinstance(value, BaseModel):
            value = value.model_dump()
        if isinstance(value, str):
            value = {"name": value}
        if not isinstance(value, dict):
            raise ValueError(f"{self.kind} config must be a mapping with a 'name' (one of {', '.join(self.names())})")
        value = {"name": self.default, **value}
        config_cls, _ = self.get(value["name"])
        return config_cls.model_validate(value)
