"""``python -m pipeline.embed``."""
import sys

from pipeline.embed.cli import main

sys.exit(main())
