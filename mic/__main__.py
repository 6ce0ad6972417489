"""`python -m mic` runs the mic command line (used by tests that need a real, killable process)."""

from mic.cli import main

main(prog_name="mic")
