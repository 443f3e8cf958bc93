"""Only real media containers are read: a ``.mp4`` that is an HLS playlist or an ffmpeg
concat list naming another file (or an image) gets a skipped row saying what it is, and the
file it names is never decoded; a real MPEG-TS stream under a ``.mp4`` name still works."""
from __future__ import annotations

import subprocess

from reliability_helpers import read_manifest

from pipeline import preprocess
from pipeline.data.meld import CLIP_DIRS, CSV_NAMES
from pipeline.sample.clip import make_clip
from pipeline.sample.text import write_meld_csv

REFUSED = "not a media file of an allowed format (ffmpeg detects {}); playlists, file lists and image sequences"


def test_playlists_and_file_lists_named_mp4_are_refused(tiny_meld_cache, tmp_path):
    root = tmp_path / "meld"
    clips = root / CLIP_DIRS["dev"]
    secret = make_clip(tmp_path / "elsewhere" / "private.mp4", "joy", 7, 1.0, 64, 36)  # never passed to the tool
    cases = {
        "dia0_utt0": ("hls", f"#EXTM3U\n#EXT-X-TARGETDURATION:1\n#EXTINF:1.0,\n{secret}\n#EXT-X-ENDLIST\n"),
        "dia0_utt1": ("concat", f"ffconcat version 1.0\nfile '{secret}'\n"),
    }
    for id_, (_, text) in cases.items():
        clips.mkdir(parents=True, exist_ok=True)
        (clips / f"{id_}.mp4").write_text(text, encoding="utf-8")
    mp4 = make_clip(tmp_path / "ts" / "clip.mp4", "joy", 3, 1.0, 64, 36)
    subprocess.run(["ffmpeg", "-nostdin", "-loglevel", "error", "-i", str(mp4), "-c", "copy", "-f", "mpegts",
                    str(clips / "dia0_utt2.mp4")], check=True)  # a real MPEG-TS stream named .mp4
    rows = [{"Sr No.": n, "Utterance": "Okay.", "Speaker": "Ross", "Emotion": "neutral", "Sentiment": "neutral",
             "Dialogue_ID": 0, "Utterance_ID": n, "Season": 1, "Episode": 1, "StartTime": "00:00:01,000",
             "EndTime": "00:00:02,000"} for n in range(3)]
    write_meld_csv(root / CSV_NAMES["dev"], rows)
    status = preprocess.main([str(root), str(tmp_path / "cache"), "--splits", "dev", "--workers", "1",
                              *tiny_meld_cache["preprocess_overrides"]])
    assert status == 0
    manifest = read_manifest(tmp_path / "cache" / "dev")
    for id_, (demuxer, _) in cases.items():
        assert manifest[id_]["status"] == "skipped", manifest[id_]
        assert manifest[id_]["reason"].startswith(REFUSED.format(demuxer)), manifest[id_]
    assert manifest["dia0_utt2"]["status"] == "ok"
