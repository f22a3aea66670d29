import sys

from emu.app.launch import main

sys.exit(main())
