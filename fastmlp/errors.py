"""The one exception type of bad user input, below every other module so that any of them may raise it."""


class UsageError(ValueError):
    """Bad user input; the one-line message says what to change (the CLI prints it and exits 2)."""
