import sys

from emu.app.cli import main

sys.exit(main())
