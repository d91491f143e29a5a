"""WordNet 3.0 glosses labelled with their 45 lexicographer classes (Debian package ``wordnet-base``).

Each synset line of ``data.{noun,verb,adj,adv}`` reads ``offset lex_filenum ss_type ... | gloss``; the
two-digit ``lex_filenum`` names the lexicographer file (``noun.animal``, ``verb.motion``...), which
we use as a 45-way topic label for the gloss.
"""

from __future__ import annotations

from pathlib import Path

from datasets import ClassLabel, Dataset, DatasetDict, Features, Value

from .splits import stratified_train_test_split

WORDNET_DIR = Path("/usr/share/wordnet")
PARTS_OF_SPEECH = ("noun", "verb", "adj", "adv")
# The lexicographer files of WordNet 3.0, by number (wordnet's lexnames(5WN)).
LEXICOGRAPHER_FILES = (
    "adj.all", "adj.pert", "adv.all", "noun.Tops", "noun.act", "noun.animal", "noun.artifact", "noun.attribute",
    "noun.body", "noun.cognition", "noun.communication", "noun.event", "noun.feeling", "noun.food", "noun.group",
    "noun.location", "noun.motive", "noun.object", "noun.person", "noun.phenomenon", "noun.plant", "noun.possession",
    "noun.process", "noun.quantity", "noun.relation", "noun.shape", "noun.state", "noun.substance", "noun.time",
    "verb.body", "verb.change", "verb.cognition", "verb.communication", "verb.competition", "verb.consumption",
    "verb.contact", "verb.creation", "verb.emotion", "verb.motion", "verb.perception", "verb.possession",
    "verb.social", "verb.stative", "verb.weather", "adj.ppl",
)


def read_glosses(wordnet_dir: Path = WORDNET_DIR) -> tuple[list[str], list[int]]:
    """All synset glosses and their lexicographer-file numbers, in file order."""
    texts: list[str] = []
    labels: list[int] = []
    for part in PARTS_OF_SPEECH:
        path = wordnet_dir / f"data.{part}"
        if not path.is_file():
            raise FileNotFoundError(
                f"{path} not found: install WordNet 3.0 with `apt-get install wordnet-base` (Debian/Ubuntu)"
            )
        with path.open(encoding="utf-8") as lines:
            for line in lines:
                if line.startswith("  "):  # the licence header
                    continue
                fields, _, gloss = line.partition(" | ")
                texts.append(gloss.strip())
                labels.append(int(fields.split(" ", 2)[1]))
    return texts, labels


def load_wordnet_glosses(test_size: float = 0.1, seed: int = 0, wordnet_dir: Path = WORDNET_DIR) -> DatasetDict:
    """117,659 glosses as a ``DatasetDict`` with a seeded train/test split; columns ``text`` and ``label``."""
    texts, labels = read_glosses(wordnet_dir)
    features = Features({"text": Value("string"), "label": ClassLabel(names=list(LEXICOGRAPHER_FILES))})
    dataset = Dataset.from_dict({"text": texts, "label": labels}, features=features)
    return stratified_train_test_split(dataset, labels, test_size, seed)
