"""CLIP's byte-level BPE tokenizer in plain Python (no PyTorch, no open_clip, no ``regex``/``ftfy``).

A deployed engine changes its vocabulary by running the exported text encoder on token ids, so the
device needs the tokenizer but nothing else of the training stack. Same algorithm and vocabulary file
as open_clip's ``SimpleTokenizer`` (``bpe_simple_vocab_16e6.txt.gz``, shipped beside the exported text
encoder); ``tests/test_tokenizer.py`` checks that both give identical ids on the COCO and ADE20K class
names, the synthetic set and prompt templates. Two simplifications, both outside class-name text:
no ftfy mojibake repair, and Python's ``re`` classes stand in for ``\\p{L}`` / ``\\p{N}``.
"""

from __future__ import annotations

import gzip
import html
import os
import re
import zlib
from functools import lru_cache, partial
from typing import Dict, List, Sequence, Tuple

import numpy as np

VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
NUM_MERGES = 49152 - 256 - 2
START, END = "<start_of_text>", "<end_of_text>"
# contractions, runs of letters, single digits, runs of anything else that is not space
_WORDS = re.compile(START + "|" + END + r"|'s|'t|'re|'ve|'m|'ll|'d|[^\W\d_]+|\d|(?:[^\s\w]|_)+", re.IGNORECASE)


def _byte_alphabet() -> Dict[int, str]:
    """Every byte -> a printable unicode character (GPT-2's table), so BPE never sees whitespace or
    control characters."""
    printable = (
        list(range(ord("!"), ord("~") + 1))
        + list(range(ord("¡"), ord("¬") + 1))
        + list(range(ord("®"), ord("ÿ") + 1))
    )
    others = [b for b in range(256) if b not in printable]
    # Order matters: the vocabulary lists these characters in this order (printable bytes first).
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + i) for i, b in enumerate(others)}}


def find_vocab_file(folder: str = None) -> str:
    """The BPE file in ``folder`` (an exported model's folder), else open_clip's copy if installed."""
    if folder is not None and os.path.isfile(os.path.join(folder, VOCAB_FILE)):
        return os.path.join(folder, VOCAB_FILE)
    try:
        import open_clip.tokenizer

        return open_clip.tokenizer.default_bpe()
    except ImportError:
        from ..errors import MissingDependencyError

        raise MissingDependencyError(
            f"no {VOCAB_FILE} in {folder!r} and open_clip is not installed: copy the file from the export folder"
        ) from None


def _read_merges(vocab_file: str) -> List[Tuple[str, ...]]:
    """The BPE merges of ``vocab_file``, or one CheckpointError: a truncated or foreign file (a copy cut short)
    would otherwise fail deep in gzip, or give other token ids than the text encoder was trained on."""
    try:
        with gzip.open(vocab_file, "rt", encoding="utf-8") as f:
            merges = [tuple(line.split()) for line in f.read().split("\n")[1 : NUM_MERGES + 1]]
        problem = None if len(merges) == NUM_MERGES and all(len(m) == 2 for m in merges) else "not CLIP's BPE merges"
    except (OSError, EOFError, zlib.error, UnicodeDecodeError) as exc:  # gzip.BadGzipFile is an OSError
        problem = str(exc)
    if problem:
        from ..errors import CheckpointError

        raise CheckpointError(
            f"tokenizer vocabulary {vocab_file} is damaged ({problem}); rebuild the folder with "
            f"`python export/build_engine.py`, or copy {VOCAB_FILE} from the open_clip package"
        )
    return merges


def _merge(ranks: Dict[Tuple[str, str], int], word: str) -> Tuple[str, ...]:
    """Greedy BPE: merge the best-ranked adjacent pair until no known pair is left."""
    if word in (START, END):
        return (word,)
    parts = list(word[:-1]) + [word[-1] + "</w>"]
    while len(parts) > 1:
        pairs = {(a, b) for a, b in zip(parts, parts[1:])}
        best = min(pairs, key=lambda p: ranks.get(p, float("inf")))
        if best not in ranks:
            break
        merged, i = [], 0
        while i < len(parts):
            if i < len(parts) - 1 and (parts[i], parts[i + 1]) == best:
                merged.append(parts[i] + parts[i + 1])
                i += 2
            else:
                merged.append(parts[i])
                i += 1
        parts = merged
    return tuple(parts)


class Tokenizer:
    def __init__(self, vocab_file: str, context_length: int = 77):
        merges = _read_merges(vocab_file)
        self.bytes = _byte_alphabet()
        symbols = list(self.bytes.values())
        vocab = symbols + [s + "</w>" for s in symbols] + ["".join(m) for m in merges] + [START, END]
        self.ids = {token: i for i, token in enumerate(vocab)}
        self.ranks = {merge: i for i, merge in enumerate(merges)}
        self.start_id, self.end_id = self.ids[START], self.ids[END]
        self.context_length = context_length
        # over the ranks, not a bound method: a cache holding self made a reference cycle, so a dropped
        # Segmenter's tokenizer (24 MB) lived until the cyclic collector ran
        self._bpe = lru_cache(maxsize=65536)(partial(_merge, self.ranks))

    def encode(self, text: str) -> List[int]:
        text = " ".join(html.unescape(html.unescape(text)).split()).lower()
        ids = []
        for word in _WORDS.findall(text):
            symbols = "".join(self.bytes[b] for b in word.encode("utf-8"))
            ids.extend(self.ids[t] for t in self._bpe(symbols))
        return ids

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        """(len(texts), context_length) int64 ids: start, text, end, zero padding; truncated texts keep
        the end token last, as open_clip does."""
        out = np.zeros((len(texts), self.context_length), np.int64)
        for row, text in enumerate(texts):
            ids = [self.start_id] + self.encode(text) + [self.end_id]
            if len(ids) > self.context_length:
                ids = ids[: self.context_length]
                ids[-1] = self.end_id
            out[row, : len(ids)] = ids
        return out


def trim_padding(tokens: np.ndarray) -> np.ndarray:
    """``tokens`` without the columns that are padding (id 0) in every row. A causal text encoder that pools
    at the end token gives every prompt the same embedding at any width that keeps its end token, so a batch
    need only run as wide as its longest prompt: about 12 of CLIP's 77 positions for COCO's prompts."""
    used = np.flatnonzero(np.asarray(tokens).any(axis=0))
    return tokens[:, : used[-1] + 1 if used.size else 1]
