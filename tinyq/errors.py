"""The one exception type meant for users."""


class TinyqError(Exception):
    """A user mistake or bad input; the CLI prints it as one line and exits non-zero.

    The message names the problem and the fix. Anything that is not a TinyqError is a bug
    in tinyq and keeps its traceback.
    """


def expected_one_of(what: str, choices, got) -> TinyqError:
    """Build the registry-style error: "unknown <what>: expected one of a, b; got c"."""
    return TinyqError(f"unknown {what}: expected one of {', '.join(map(str, choices))}; got {got!r}")
