"""Reading clips, shared by preprocessing and inference: ``probe`` (ffprobe, limits, checks),
``decode`` (frames and audio through ffmpeg), ``faces`` (face detectors for crops) and
``features`` (tokens, log-mel, waveform, frames: the front end of every encoder).
"""
