"""Sample-data generator: a small folder shaped exactly like MELD.Raw, with learnable labels.

``python -m pipeline.sample OUT_DIR [--clips-per-class N] [--seed S] ...`` writes

    OUT_DIR/train_sent_emo.csv  dev_sent_emo.csv  test_sent_emo.csv
    OUT_DIR/train_splits/  dev_splits_complete/  output_repeated_splits_test/   diaD_uttU.mp4

with MELD's CSV columns, CRLF line ends and ``"hh:mm:ss,ms"`` times, and clips as the real
release has them: H.264 yuv420p video at 1280x720 / 24 fps, AAC 48 kHz audio with 2 or 6
channels. The emotion of an utterance can be learnt from each modality on its own:

- text: per-emotion sentence templates with neutral slot fillers, plus a share of
  ambiguous sentences shared by all emotions (so text alone is not perfect);
- audio: a harmonic "voice" whose pitch band, syllable rate, pitch contour and loudness
  depend on the emotion, plus a little noise;
- video: a drawn face whose mouth, background hue and motion depend on the emotion.

How much each modality tells is adjustable (``--ambiguous-share``, ``--audio-random-share``,
``--video-random-share``): a share of the clips can show the voice or the face of a randomly
drawn emotion, so that no modality alone is perfect and combining them pays (the fusion
benchmark, ``bench/fusion.py``, uses this).

Like the real release, the dev and test folders also hold an unlabelled clip that no CSV
row names (``--no-extras`` leaves them out). Everything is deterministic in ``--seed``:
the same seed gives byte-identical CSVs and clips.

Each clip is one ffmpeg call: frames are rendered in numpy at low resolution and piped
in as raw RGB (ffmpeg scales them up), the audio is piped in as raw PCM on a second pipe.
"""
from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any, Sequence

from pipeline.logs import setup_cli_logging
from pipeline.sample.folder import generate
from pipeline.sample.plan import SPLITS, Difficulty
from pipeline.sample.text import AMBIGUOUS_SHARE

PROG = "python -m pipeline.sample"


def parse_pair(text: str) -> tuple[float, float]:
    """``"1.5,3.5"`` -> ``(1.5, 3.5)`` (argparse type)."""
    try:
        low, high = (float(v) for v in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected two numbers like 1.5,3.5, got {text!r}")
    return low, high


def parse_splits(text: str) -> list[str]:
    """``"train,dev"`` -> ``["train", "dev"]`` (argparse type)."""
    splits = [s.strip() for s in text.split(",") if s.strip()]
    if not splits or set(splits) - set(SPLITS):
        raise argparse.ArgumentTypeError(
            f"expected a comma list of {', '.join(SPLITS)}, got {text!r}")
    return splits


def build_parser(prog: str = PROG) -> argparse.ArgumentParser:
    """The options of the command (numpy and tqdm at most: ``--help`` imports no torch)."""
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Write a small MELD.Raw-shaped folder whose labels are learnable from "
                    "text, audio and video separately.")
    parser.add_argument("out_dir", type=Path, metavar="OUT_DIR",
                        help="folder to write the MELD-shaped CSVs and clip folders into")
    parser.add_argument("--clips-per-class", type=int, default=12,
                        help="train utterances per emotion (default: %(default)s)")
    parser.add_argument("--eval-clips-per-class", type=int, default=None,
                        help="dev and test utterances per emotion (default: a third of train, >= 2)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of every random choice: the same seed gives identical files (default: %(default)s)")
    parser.add_argument("--splits", type=parse_splits, default=list(SPLITS),
                        help=f"comma list of {','.join(SPLITS)} (default: {','.join(SPLITS)})")
    parser.add_argument("--duration-range", type=parse_pair, default=(1.5, 3.5),
                        help="clip durations in seconds, LOW,HIGH (default: 1.5,3.5)")
    parser.add_argument("--width", type=int, default=1280, help="video width in pixels (default: %(default)s)")
    parser.add_argument("--height", type=int, default=720, help="video height in pixels (default: %(default)s)")
    parser.add_argument("--workers", type=int, default=None,
                        help="clips rendered at once (default: one per CPU)")
    parser.add_argument("--no-extras", dest="extras", action="store_false",
                        help="leave out the unlabelled extra clips of dev and test (default: written)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace the MELD CSVs and clip folders already in OUT_DIR (default: refuse)")
    parser.add_argument("--ambiguous-share", type=float, default=AMBIGUOUS_SHARE,
                        help="share of utterances with ambiguous text (default: %(default)s)")
    parser.add_argument("--audio-random-share", type=float, default=0.0,
                        help="share of clips whose voice shows a random emotion (default: %(default)s)")
    parser.add_argument("--video-random-share", type=float, default=0.0,
                        help="share of clips whose face shows a random emotion (default: %(default)s)")
    return parser


def main(argv: Sequence[str] | None = None, prog: str = PROG) -> dict[str, Any]:
    """Command line: ``python -m pipeline.sample OUT_DIR [options]``."""
    parser = build_parser(prog)
    args = parser.parse_args(argv)
    setup_cli_logging()
    try:
        difficulty = Difficulty(args.ambiguous_share, args.audio_random_share, args.video_random_share)
        return generate(args.out_dir, args.clips_per_class, args.seed, args.splits, args.width,
                        args.height, args.duration_range, args.workers, args.extras, args.overwrite,
                        difficulty, args.eval_clips_per_class)
    except (ValueError, FileExistsError) as error:
        parser.error(str(error))
