"""``python -m pipeline.train`` (and ``torchrun ... -m pipeline.train``)."""
from pipeline.train.cli import main

main()
