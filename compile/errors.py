"""The one exception type the command line turns into a one-line message instead of a traceback."""


class LutlmError(Exception):
    """Bad input or an unmet precondition, described for the person who supplied it."""
