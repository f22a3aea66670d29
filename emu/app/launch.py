"""The `lpemu` process (the console script and `python -m emu`): the
signals that stop a command are taken (emu/runs/interrupt.py) before the
command's modules are imported, so that a SIGTERM or a Ctrl-C that comes
while they load ends as one that comes later does: "lpemu: interrupted" and
status 128 + the signal, never a traceback."""
import sys

from emu.runs import interrupt


def main(argv=None) -> int:
    """Run the command line (emu/app/cli.py main); returns the exit status."""
    old = interrupt.install()
    try:
        from emu.app.cli import main as run
        return run(argv)
    except KeyboardInterrupt as exc:
        print("lpemu: interrupted", file=sys.stderr)
        return interrupt.status(exc)
    finally:
        interrupt.restore(old)
