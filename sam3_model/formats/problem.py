"""The one error type of the format checks: what is wrong; the caller names the file and the entry."""


class FormatProblem(ValueError):
    """One bad value (phrase, mask, category); the message says what, the caller names the file and the entry."""
