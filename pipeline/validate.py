"""DVC stage `params`: check the whole params.yaml before any other stage runs.

    python -m pipeline.validate --out runs/params.ok

Every other stage depends on its output, whose content never changes while params.yaml is
valid: a valid edit re-runs this stage (a second, no torch) and then only the stages whose
keys it touched, while a misspelt or bad key (`seedz: 10`, a value out of range in any task)
makes `dvc repro` stop here with one `error:` line, before anything runs. Each stage's own
command checks the whole file again, so a stage run by hand catches the same mistakes.
"""
from __future__ import annotations

import sys
from pathlib import Path

from odt.atomic import write_text
from pipeline import cli

OK = "params.yaml is valid: every key known, every task's configs built\n"


def main(argv: list[str] | None = None) -> int:
    ap = cli.Parser(prog="python -m pipeline.validate", description=__doc__.splitlines()[0])
    ap.add_argument("--params", default="params.yaml")
    ap.add_argument("--out", required=True, help="written when the file is valid (always the same text)")
    args = ap.parse_args(argv)
    cli.load_or_exit(args.params)
    code, _ = cli.run_guarded("params", lambda: write_text(Path(args.out), OK))
    return code


if __name__ == "__main__":
    sys.exit(main())
