"""WordNet synonyms, read offline from a WordNet 3.0 database folder with NLTK's reader.

``load_wordnet(folder)`` returns a :class:`WordNet`; ``wordnet.synonyms("glad")`` gives the
words that can stand for it. The folder is the one Debian's ``wordnet-base`` installs
(``/usr/share/wordnet``: ``index.*``, ``data.*``, ``*.exc``), read in place: nothing is
downloaded, and NLTK's ``nltk.download`` is never called.

Two things differ from ``nltk.corpus.wordnet``, both for that folder:

* Debian leaves out ``lexnames``, the table of lexicographer file names that NLTK's reader
  opens first. When the folder lacks it, the reader gets WordNet 3.0's own table
  (:data:`LEXNAMES`, as in its ``lexnames(5WN)`` manual page); it only names synsets'
  lexicographer files, which nothing here reads.
* NLTK maps every other WordNet version onto 3.0 through its ``index.sense`` for the
  multilingual (OMW) functions; this reader skips that mapping, which would fetch NLTK's
  own copy of WordNet.

A word's part of speech and senses come from WordNet's own sense-tag counts (``cntlist.rev``,
part of the database; no tagger is needed, and none is installed): see :meth:`WordNet.senses`.
Its synonyms are the other lemmas of those senses, in WordNet's order (most frequent sense
first), multi-word ones with spaces.
"""
from __future__ import annotations

import io
import re
import warnings
from pathlib import Path
from typing import Any

from pipeline.config import ConfigError

POS_ORDER = ("n", "v", "a", "r")  # a tie goes to the earlier
REQUIRED = ("cntlist.rev", "index.noun", "data.noun", "index.verb", "data.verb", "index.adj", "data.adj", "index.adv", "data.adv")
INSTALL_HINT = ("install Debian's wordnet-base (apt-get install wordnet-base, as scripts/install.sh does) or set "
                "train.wordnet_dir to a WordNet 3.0 database folder")
# WordNet 3.0's lexicographer files, by number (lexnames(5WN)); the last column of the file
# is the syntactic category: 1 noun, 2 verb, 3 adjective, 4 adverb.
LEXNAMES = (
    "adj.all adj.pert adv.all noun.Tops noun.act noun.animal noun.artifact noun.attribute noun.body "
    "noun.cognition noun.communication noun.event noun.feeling noun.food noun.group noun.location noun.motive "
    "noun.object noun.person noun.phenomenon noun.plant noun.possession noun.process noun.quantity "
    "noun.relation noun.shape noun.state noun.substance noun.time verb.body verb.change verb.cognition "
    "verb.communication verb.competition verb.consumption verb.contact verb.creation verb.emotion verb.motion "
    "verb.perception verb.possession verb.social verb.stative verb.weather adj.ppl").split()
CATEGORY = {"noun": 1, "verb": 2, "adj": 3, "adv": 4}
# a synonym is kept when it is made of letters (with spaces, hyphens, apostrophes, periods)
WORDLIKE = re.compile(r"[A-Za-z][A-Za-z.' -]*")


def lexnames_text() -> str:
    return "".join(f"{number:02d}\t{name}\t{CATEGORY[name.split('.')[0]]}\n" for number, name in enumerate(LEXNAMES))


class WordNet:
    """Synonym lookups over an NLTK ``WordNetCorpusReader`` (cached per word)."""

    def __init__(self, reader: Any) -> None:
        self.reader = reader
        self.cache: dict[str, tuple[str, ...]] = {}

    def senses(self, word: str) -> list[Any]:
        """The synsets of ``word`` (lower case) in its part of speech: the one whose senses
        of it are tagged most often in WordNet's sense-tagged corpus (``cntlist.rev``; most
        senses when none is tagged, nouns first on a tie), only its tagged senses where
        it has any (an untagged sense is rare: "good" as "undecomposed")."""
        by_pos = {pos: self.reader.synsets(word, pos) for pos in POS_ORDER}
        tagged = {pos: [(synset, self.count(synset, word)) for synset in synsets] for pos, synsets in by_pos.items()}
        best = max(POS_ORDER, key=lambda pos: (sum(count for _, count in tagged[pos]), len(by_pos[pos])))
        used = [synset for synset, count in tagged[best] if count > 0]
        return used or by_pos[best]

    def count(self, synset: Any, word: str) -> int:
        """How often ``synset`` is tagged as ``word`` (its lemma of that name, or its base form)."""
        names = {word, self.reader.morphy(word, synset.pos()) or word}
        return sum(lemma.count() for lemma in synset.lemmas() if lemma.name().lower() in names)

    def synonyms(self, word: str) -> tuple[str, ...]:
        """The other lemmas of ``word``'s senses (:meth:`senses`), leaving out the word and its
        base form (``running`` -> ``run``) and repeats; () when it has none."""
        word = word.lower()
        if word not in self.cache:
            found: list[str] = []
            for synset in self.senses(word):
                same = {word, (self.reader.morphy(word, synset.pos()) or word).lower()}
                for lemma in synset.lemmas():
                    name = lemma.name().replace("_", " ")
                    if name.lower() not in same and name not in found and WORDLIKE.fullmatch(name):
                        found.append(name)
            self.cache[word] = tuple(found)
        return self.cache[word]


def load_wordnet(folder: str | Path) -> WordNet:
    """The WordNet database in ``folder``; ConfigError in one line when it is not there."""
    folder = Path(folder).expanduser()
    missing = [name for name in REQUIRED if not (folder / name).is_file()]
    if missing:
        raise ConfigError(f"train.synonym_replace_samples: no WordNet database in {folder} "
                          f"({', '.join(missing[:2])}{' ...' if len(missing) > 2 else ''} missing): {INSTALL_HINT}")
    import nltk.data
    from nltk.corpus.reader.wordnet import WordNetCorpusReader

    class FolderReader(WordNetCorpusReader):
        def open(self, fileid: str) -> Any:
            if fileid == "lexnames" and not (folder / "lexnames").is_file():
                return io.StringIO(lexnames_text())
            return super().open(fileid)

        def map_wn(self, version: str = "wordnet") -> None:
            return None

    root = str(folder.resolve())
    if root not in nltk.data.path:  # NLTK reads corpora only under the folders of its data path
        nltk.data.path.append(root)
    with warnings.catch_warnings():  # "the multilingual functions are not available": none are used
        warnings.simplefilter("ignore")
        try:
            return WordNet(FolderReader(root, None))
        except (OSError, ValueError, AssertionError, StopIteration) as err:
            raise ConfigError(f"train.wordnet_dir: {folder} does not read as a WordNet 3.0 database "
                              f"({type(err).__name__}: {err}): {INSTALL_HINT}") from None
