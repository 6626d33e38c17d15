"""How much raeflow prints: `--quiet` (summary and errors), normal (plus progress), `--verbose`
(plus Ray's own log lines). The CLI sets the level once; `connect_ray` and `Progress` read it.

Ray-free: importing this module never imports Ray.
"""

from __future__ import annotations

import sys
from typing import Literal

Level = Literal["quiet", "normal", "verbose"]
LEVELS: tuple[Level, ...] = ("quiet", "normal", "verbose")

_level: Level = "normal"


def set_level(level: Level) -> None:
    """Choose what this process prints from now on."""
    global _level
    if level not in LEVELS:
        raise ValueError(f"console level must be one of {LEVELS}, got {level!r}")
    _level = level


def level() -> Level:
    """The level the CLI chose (normal when nothing chose one)."""
    return _level


def is_quiet() -> bool:
    """Only the summary and errors are printed."""
    return _level == "quiet"


def is_verbose() -> bool:
    """Ray's own log lines reach the console too."""
    return _level == "verbose"


def notice(line: str) -> None:
    """Tell the user one line about how the job will run (stderr, beside the progress; not with --quiet)."""
    if not is_quiet():
        print(line, file=sys.stderr, flush=True)
