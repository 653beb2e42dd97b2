"""The one exception type for mistakes a user can fix by changing a config key or a file."""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import TypeVar

T = TypeVar("T")


class ConfigError(ValueError):
    """A user-fixable problem, stated in one sentence naming the config key or file and the fix."""


def one_line_errors(main: Callable[..., T]) -> Callable[..., T]:
    """For command-line entries: a ConfigError ends the program with its sentence, no traceback."""

    @functools.wraps(main)
    def run(*args, **kwargs) -> T:
        try:
            return main(*args, **kwargs)
        except ConfigError as error:
            raise SystemExit(f"Error: {error}") from None

    return run
