"""Settings helpers shared by every process.

Each process declares its own ``pydantic_settings.BaseSettings`` subclass with an ``OMNIOPD_...``
prefix and loads it through :func:`load_settings`, which turns a validation error into one line
per bad variable (its environment name and what it must be) and exits before anything starts.
"""

from __future__ import annotations

from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

S = TypeVar("S", bound=BaseSettings)

ENV_PREFIX = "OMNIOPD_"


class SettingsError(SystemExit):
    """A bad setting: uncaught, Python prints the message (no traceback) and exits with 1."""

    @property
    def message(self) -> str:
        return str(self.code)


def settings_config(prefix: str) -> SettingsConfigDict:
    """The one configuration every process's settings use: ``OMNIOPD_<PREFIX>`` variables."""
    return SettingsConfigDict(
        env_prefix=f"{ENV_PREFIX}{prefix}",
        extra="ignore",
        validate_default=True,
        case_sensitive=False,
    )


def env_name(cls: type[BaseSettings], field: str) -> str:
    """The environment variable that sets ``field`` of ``cls``."""
    info = cls.model_fields.get(field)
    if info is None and any(field in _alias_names(f) for f in cls.model_fields.values()):
        return field  # the error is located at the alias the value was read from
    alias = info.validation_alias if info is not None else None
    choices = getattr(alias, "choices", None)
    if choices:
        return " or ".join(str(c) for c in choices)
    if isinstance(alias, str):
        return alias
    return f"{cls.model_config.get('env_prefix', '')}{field}".upper()


def _alias_names(info: Any) -> list[str]:
    alias = info.validation_alias
    choices = getattr(alias, "choices", None)
    if choices:
        return [str(c) for c in choices]
    return [alias] if isinstance(alias, str) else []


def describe_errors(cls: type[BaseSettings], err: ValidationError) -> str:
    lines = [f"invalid settings for {cls.__name__}:"]
    for e in err.errors():
        field = str(e["loc"][0]) if e["loc"] else "?"
        got = e.get("input")
        shown = "" if isinstance(got, dict) else f" (got {got!r})"
        lines.append(f"  {env_name(cls, field)}: {e['msg']}{shown}")
    return "\n".join(lines)


def load_settings(cls: type[S], **overrides: Any) -> S:
    """Build ``cls`` from the environment plus explicit ``overrides`` (e.g. CLI flags).

    On a bad value this raises :class:`SettingsError` naming each bad variable, so a process
    fails at start-up with a message a person can act on, never with a traceback.
    """
    given = {k: v for k, v in overrides.items() if v is not None}
    try:
        return cls(**given)
    except ValidationError as err:
        raise SettingsError(describe_errors(cls, err)) from None
