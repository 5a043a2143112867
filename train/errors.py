"""The one exception type a user can cause; the CLI turns it into a one-line error, exit 2."""


class UserError(Exception):
    """Bad input from the user (arguments, files, data): message is shown as-is."""
