"""The DVC stages' scripts (`python -m pipeline.<stage>`) and the modules they share."""
from pipeline import interrupts as _interrupts

if _interrupts.command():  # `python -m pipeline.<command>`: Ctrl-C and SIGTERM handled before anything else runs
    _interrupts.install()
