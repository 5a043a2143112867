"""The one-line CLI error convention shared by every command (train, export, studies).

A bad argument prints `error: ...` on one line (not argparse's whole usage) and exits 2.
Kept outside train/, data/ and export/ so that none has to import another for it.
"""
from __future__ import annotations

import argparse


class UserError(Exception):
    """Bad input from the user (arguments, files, data): the message is shown as-is,
    on one line, and the command exits 2."""


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line (not the whole usage) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
