"""Command-line helpers: every flag falls back to an environment variable and says so in --help."""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Callable
from typing import Any


def env_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    *flags: str,
    env: str,
    default: Any = None,
    type: Callable[[str], Any] = str,
    help: str,
    secret: bool = False,
    **kwargs: Any,
) -> None:
    """Add an option whose default comes from ``env``, else ``default``.

    The help text names the variable and the built-in default, or says that the environment
    set it (showing the value unless the option is ``secret``).
    """
    from_env = os.environ.get(env)
    value = type(from_env) if from_env not in (None, "") else default
    if from_env in (None, ""):
        shown = f"default: {default}"
    else:
        shown = "set from the environment" if secret else f"now: {from_env}"
    parser.add_argument(
        *flags,
        default=value,
        type=type,
        help=f"{help} (env {env}; {shown})",
        **kwargs,
    )


def env_bool_flag(
    parser: argparse.ArgumentParser | argparse._ArgumentGroup,
    flag: str,
    *,
    env: str,
    help: str,
) -> None:
    """A boolean switch that is also on when ``env`` is 1/true/yes."""
    on = os.environ.get(env, "").strip().lower() in ("1", "true", "yes", "on")
    parser.add_argument(
        flag, action="store_true", default=on, help=f"{help} (env {env}=1; default: off)"
    )


def default_of(cls: type, name: str) -> Any:
    """The default of field ``name`` of dataclass ``cls``, for a flag that sets it.

    Reads :func:`dataclasses.fields` (a slotted dataclass has no class attribute holding it);
    raises KeyError for an unknown field or one without a default.
    """
    for item in dataclasses.fields(cls):
        if item.name != name:
            continue
        if item.default is not dataclasses.MISSING:
            return item.default
        if item.default_factory is not dataclasses.MISSING:
            return item.default_factory()
        break
    raise KeyError(f"{cls.__name__}.{name} has no default")
