"""Help output shared by every ``blockdrop`` subcommand."""

from __future__ import annotations

import argparse


class DefaultsInHelp(argparse.HelpFormatter):
    """Shows each option's default after its help, unless the help already says it or there is none to show
    (None, False, an empty list)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        help_text = action.help or ""
        nothing = action.default in (None, argparse.SUPPRESS) or action.default is False or action.default == []
        if action.option_strings and not nothing and "default" not in help_text:
            help_text += " (default: %(default)s)"
        return help_text
