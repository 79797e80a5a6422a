"""What a writer killed mid-write leaves: odt.atomic's temporary names, carrying the pid of a process that is gone."""
from __future__ import annotations

import subprocess

from odt.atomic import HOST


def dead_pid() -> int:
    """The pid of a process that has exited (and been reaped): what a killed writer leaves in its temp names."""
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def killed_writers_temp(target, kind: str = "tmp"):
    """The name odt.atomic gives a temporary (kind "tmp") or an old copy ("old") of `target`, as a dead process
    left it."""
    return target.with_name(f".{target.name}.{kind}-{HOST}-{dead_pid()}-k1lled")
