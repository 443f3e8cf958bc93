"""Small generated inputs for the preprocessing tests: clips, CSVs, a tokenizer, a MELD tree."""
from __future__ import annotations

import csv
import io
import subprocess
from pathlib import Path
from typing import Any, Sequence

from pipeline.data.meld import CLIP_DIRS, CSV_NAMES

HEADER = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
          "Season", "Episode", "StartTime", "EndTime"]
VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "joey", "monica", "chandler", "how", "you",
         "doin", "?", "!", ".", ":", ",", "i", "am", "so", "happy", "oh", "my", "god", "’", "m",
         "fine", "no", "way", "yes", "okay", "…"]


def make_clip(path: Path, duration: float, *, width: int = 64, height: int = 48, fps: float = 12,
              audio: bool = True, video: bool = True, channels: int = 2, sample_rate: int = 22050,
              brightness_per_second: float | None = None) -> Path:
    """An H.264/AAC mp4 from ffmpeg's lavfi sources. With ``brightness_per_second`` the
    video is flat grey with value ``t * brightness_per_second`` at time t, so a test can
    tell which moment a sampled frame shows."""
    command = ["ffmpeg", "-nostdin", "-v", "error", "-y"]
    if video:
        if brightness_per_second is None:
            source = f"testsrc2=size={width}x{height}:rate={fps}:duration={duration}"
        else:
            source = (f"color=c=black:s={width}x{height}:r={fps}:d={duration},format=gray,"
                      f"geq=lum='T*{brightness_per_second}'")
        command += ["-f", "lavfi", "-i", source]
    if audio:
        command += ["-f", "lavfi", "-i", f"sine=frequency=440:sample_rate={sample_rate}:duration={duration}"]
    if video:
        command += ["-c:v", "libx264", "-preset", "ultrafast", "-pix_fmt", "yuv420p"]
    if audio:
        command += ["-c:a", "aac", "-ac", str(channels)]
    path.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run(command + [str(path)], check=True)
    return path


def csv_text(rows: Sequence[dict[str, Any]], bom: bool = True) -> str:
    """A MELD CSV as the release writes it: CRLF line ends, quoted times, optional BOM."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\r\n")
    writer.writerow(HEADER)
    for number, row in enumerate(rows, 1):
        writer.writerow([number, row["utterance"], row.get("speaker", "Joey"), row.get("emotion", "neutral"),
                         row.get("sentiment", "neutral"), row["dialogue"], row["utterance_id"], 1, 1,
                         "00:00:01,000", "00:00:03,000"])
    return ("\ufeff" if bom else "") + buffer.getvalue()


def write_csv(path: Path, rows: Sequence[dict[str, Any]], bom: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(csv_text(rows, bom).encode("utf-8"))
    return path


def save_tokenizer(folder: Path) -> Path:
    """A tiny WordPiece tokenizer over VOCAB, saved as a Hugging Face folder."""
    from transformers import BertTokenizerFast

    BertTokenizerFast(vocab={token: i for i, token in enumerate(VOCAB)}).save_pretrained(folder)
    return folder


def row(dialogue: int, utterance_id: int, utterance: str, speaker: str = "Joey",
        emotion: str = "neutral", sentiment: str = "neutral") -> dict[str, Any]:
    return {"dialogue": dialogue, "utterance_id": utterance_id, "utterance": utterance,
            "speaker": speaker, "emotion": emotion, "sentiment": sentiment}


# Every fault the issue lists, in one MELD-shaped tree: (what, id).
FAULTS = {
    "missing": "dia1_utt0", "empty": "dia1_utt1", "truncated": "dia1_utt2", "not_video": "dia1_utt3",
    "no_audio": "dia2_utt0", "no_video": "dia2_utt1", "short": "dia2_utt2", "long": "dia2_utt3",
    "portrait": "dia3_utt0", "mono_44k_30fps": "dia3_utt1",
}


def make_meld_tree(root: Path) -> dict[str, Any]:
    """A MELD.Raw-like folder: train (two clean dialogues) and dev (every fault), plus an
    unlabelled extra clip in dev. Returns what the tests need to know about it."""
    train_rows = [row(0, 0, "Oh my God!", "Monica", "surprise", "positive"),
                  row(0, 1, "I am so happy.", "Chandler", "joy", "positive"),
                  row(0, 2, "No way…", "Joey", "anger", "negative"),
                  row(4, 0, "How you doin\x92?", "Joey", "neutral", "neutral")]
    write_csv(root / CSV_NAMES["train"], train_rows)
    train_dir = root / "train" / CLIP_DIRS["train"]  # nested one level, as some unpackings are
    for index, r in enumerate(train_rows):
        make_clip(train_dir / f"dia{r['dialogue']}_utt{r['utterance_id']}.mp4", 1.0 + 0.5 * index)

    dev_rows = [row(int(i.split("_")[0][3:]), int(i.split("utt")[1]), f"Okay {name}.", "Monica",
                    ["neutral", "joy", "surprise", "anger", "sadness", "disgust", "fear"][n % 7],
                    ["neutral", "positive", "negative"][n % 3])
                for n, (name, i) in enumerate(FAULTS.items())]
    write_csv(root / CSV_NAMES["dev"], dev_rows)
    dev_dir = root / CLIP_DIRS["dev"]
    dev_dir.mkdir(parents=True)
    (dev_dir / f"{FAULTS['empty']}.mp4").write_bytes(b"")
    full = make_clip(dev_dir / "full.tmp.mp4", 2.0).read_bytes()
    (dev_dir / "full.tmp.mp4").unlink()
    (dev_dir / f"{FAULTS['truncated']}.mp4").write_bytes(full[: len(full) // 2])
    (dev_dir / f"{FAULTS['not_video']}.mp4").write_text("this is not a video\n")
    make_clip(dev_dir / f"{FAULTS['no_audio']}.mp4", 1.0, audio=False)
    make_clip(dev_dir / f"{FAULTS['no_video']}.mp4", 1.0, video=False)
    make_clip(dev_dir / f"{FAULTS['short']}.mp4", 0.3)
    make_clip(dev_dir / f"{FAULTS['long']}.mp4", 30.0, width=32, height=32, fps=10, brightness_per_second=8)
    make_clip(dev_dir / f"{FAULTS['portrait']}.mp4", 1.0, width=48, height=64)
    make_clip(dev_dir / f"{FAULTS['mono_44k_30fps']}.mp4", 1.0, fps=30, channels=1, sample_rate=44100)
    make_clip(dev_dir / "final_videos_test_extra.mp4", 0.5)
    return {"train_ids": [f"dia{r['dialogue']}_utt{r['utterance_id']}" for r in train_rows],
            "dev_ids": list(FAULTS.values()), "train_rows": train_rows, "dev_rows": dev_rows}
