"""``python -m pipeline.infer``."""
import sys

from pipeline.infer.cli import main

sys.exit(main())
