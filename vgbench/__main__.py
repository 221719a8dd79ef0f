import sys

from vgbench.cli import main

sys.exit(main())
