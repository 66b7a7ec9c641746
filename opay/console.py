"""The lines people read on stdout as parts start and stop (log records go to stderr).

Its own module so that a supervisor can speak before it imports the runtime, whose
metrics must be declared only after the multiprocess directory is chosen (opay/frontends.py).
"""


def say(part: str, what: str) -> None:
    """One line for a part that started or stopped."""
    print(f"opay {part:<12} {what}", flush=True)
