"""python -m helpers.engine: the command line of helpers/engine/cli.py."""
import sys

from helpers.engine.cli import main

sys.exit(main())
