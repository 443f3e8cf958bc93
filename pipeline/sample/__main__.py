"""``python -m pipeline.sample``."""
from pipeline.sample.cli import main

main()
