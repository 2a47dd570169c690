"""The one base class of the errors a user can act on (a bad flag, a missing file, a damaged store).

Every library error that means "the input or the setting is wrong, here is why" derives from
:class:`UserError`; the command lines of ``flowprep`` and ``trainer`` catch this one class and print
its message as one line, so a new error class needs no change in any CLI. Messages name the setting
(``algo``, ``optim.lr``), the file and the problem; the CLI adds how to set it where that differs.
"""

from __future__ import annotations


class UserError(Exception):
    """A problem with the user's input, settings or files, explained in one line (no traceback)."""


class SettingError(UserError, ValueError):
    """A setting with a value it cannot have. ``setting`` names it as a pipeline or config file does
    (``algo``, ``flow_params.alpha``), ``value`` is what was given (None: no value to show) and
    ``problem`` says why, continuing a sentence that starts with the setting ("quality must be in
    1..100, got 300"); the CLI puts the setting's flag in its place ("--quality must be ...")."""

    def __init__(self, setting: str, problem: str, value: object = None):
        self.setting, self.problem, self.value = setting, problem, value
        super().__init__(f"{setting} {problem}" + ("" if value is None else f", got {value!r}"))
