#!/usr/bin/env bash
# Download MELD.Raw.tar.gz (resumable), check it, and unpack it and its nested split
# tarballs into the layout scripts/preprocess_meld.sh expects.
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
# shellcheck source=python.sh
source "$here/python.sh"

URL="https://web.eecs.umich.edu/~mihalcea/downloads/MELD.Raw.tar.gz"  # from the MELD README

usage() {
    cat >&2 <<'USAGE'
usage: scripts/download_meld.sh DEST [--from-archive FILE]

Downloads MELD.Raw.tar.gz (~10 GB) into DEST with `wget -c` (or `curl -C -`), so an
interrupted download resumes when run again; checks that it is a complete gzip tarball;
unpacks it and the train/dev/test tarballs inside it, giving
  DEST/MELD.Raw/{train,dev,test}_sent_emo.csv
  DEST/MELD.Raw/train_splits/ dev_splits_complete/ output_repeated_splits_test/
Then: scripts/preprocess_meld.sh DEST/MELD.Raw CACHE_DIR

  --from-archive FILE   use an already downloaded MELD.Raw.tar.gz instead of downloading
  --overwrite           replace files in DEST that differ from the release's (else refused)

Unpacking happens in a new folder of the script's own inside DEST (members with absolute
paths, "..", links out of it or special files are refused); only the nested tarballs it
unpacked there are deleted, and no file of DEST is replaced without --overwrite.
USAGE
}

dest=""
archive=""
overwrite=()
while [[ $# -gt 0 ]]; do
    case "$1" in
        --from-archive) [[ $# -ge 2 ]] || { usage; exit 2; }; archive="$2"; shift 2 ;;
        --overwrite) overwrite=(--overwrite); shift ;;
        -h|--help) usage; exit 0 ;;
        -*) echo "download_meld.sh: unknown option $1" >&2; usage; exit 2 ;;
        *) [[ -z "$dest" ]] || { usage; exit 2; }; dest="$1"; shift ;;
    esac
done
[[ -n "$dest" ]] || { usage; exit 2; }
mkdir -p "$dest"
marker="$dest/.meld_unpacked"
if [[ -f "$marker" ]]; then
    echo "MELD is already unpacked in $dest (delete $marker to unpack again)" >&2
    exit 0
fi

# A complete gzip tarball: the gzip magic, then tar reads every header to the end (gzip's
# CRC check fails on a truncated or corrupt download).
is_complete() {
    [[ -f "$1" && "$(head -c 2 "$1" | od -An -tx1 | tr -d ' \n')" == "1f8b" ]] && tar -tzf "$1" >/dev/null 2>&1
}

checked=0
if [[ -z "$archive" ]]; then
    archive="$dest/MELD.Raw.tar.gz"
    if is_complete "$archive"; then
        checked=1
        echo "$archive is already complete" >&2
    else
        echo "downloading $URL to $archive (resumable: run again if interrupted)" >&2
        if command -v wget >/dev/null 2>&1; then
            wget -c -P "$dest" "$URL"
        elif command -v curl >/dev/null 2>&1; then
            curl -fL -C - -o "$archive" "$URL"
        else
            echo "download_meld.sh: neither wget nor curl is installed" >&2
            exit 1
        fi
    fi
fi
if [[ $checked -eq 0 ]]; then
    echo "checking $archive" >&2
    if ! is_complete "$archive"; then
        echo "download_meld.sh: $archive is missing, not a gzip tarball, truncated or corrupt;" \
             "run again without --from-archive to resume the download" >&2
        exit 1
    fi
fi

# The release nests one tarball per split (train.tar.gz, dev.tar.gz, test.tar.gz).
"$PYTHON" "$here/unpack_meld.py" "$archive" "$dest" "${overwrite[@]}"

status=0
for split in train dev test; do
    case "$split" in
        train) folder=train_splits ;;
        dev) folder=dev_splits_complete ;;
        test) folder=output_repeated_splits_test ;;
    esac
    csv="$(find "$dest" -maxdepth 3 -name "${split}_sent_emo.csv" -print -quit)"
    clips="$(find "$dest" -maxdepth 3 -type d -name "$folder" -print -quit)"
    if [[ -z "$csv" || -z "$clips" ]]; then
        echo "download_meld.sh: $split: ${split}_sent_emo.csv or $folder/ not found under $dest" >&2
        status=1
    else
        echo "$split: $csv, $clips ($(find "$clips" -maxdepth 1 -name '*.mp4' | wc -l) clips)" >&2
    fi
done
[[ $status -eq 0 ]] && touch "$marker" && echo "done: scripts/preprocess_meld.sh $dest CACHE_DIR" >&2
exit $status
