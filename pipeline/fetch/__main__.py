"""``python -m pipeline.fetch``."""
import sys

from pipeline.fetch.cli import main

sys.exit(main())
