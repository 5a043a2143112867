"""The one-line CLI error convention shared by every command (train, export, studies).

A bad argument prints `error: ...` on one line (not argparse's whole usage) and exits 2.
Kept outside train/ and export/ so that neither has to import the other for it.
"""
from __future__ import annotations

import argparse


class OneLineErrorParser(argparse.ArgumentParser):
    """argparse, but a bad argument prints one line (not the whole usage) and exits 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message} (see {self.prog} --help)\n")
