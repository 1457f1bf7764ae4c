"""One exception type for bad user input, so the CLI can print it as a single line."""


class StreamlineError(Exception):
    """Bad input (config value, path, architecture). The message is one line naming the problem."""
