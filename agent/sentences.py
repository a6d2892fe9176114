"""Cut a streamed answer into sentences, so speech can start before the model has finished."""

from __future__ import annotations

import re

BOUNDARY = re.compile(r"[.!?]+[\"')\]]*\s+|\n+")
# A period after these does not end a sentence ("Dr. Lee", "9 a.m. on Tuesday").
ABBREVIATIONS = ("dr.", "mr.", "mrs.", "ms.", "st.", "a.m.", "p.m.", "e.g.", "i.e.", "vs.")
MARKUP = re.compile(r"[*#`]+")


class Sentences:
    """Feed it text fragments; it hands back each sentence once the next one has begun."""

    def __init__(self) -> None:
        self._buffer = ""

    def feed(self, fragment: str) -> list[str]:
        self._buffer += fragment
        out = []
        while (cut := self._boundary()) is not None:
            sentence, self._buffer = self._buffer[:cut], self._buffer[cut:]
            out.extend(_clean(sentence))
        return out

    def flush(self) -> list[str]:
        """The final fragment, once the stream has ended."""
        rest, self._buffer = self._buffer, ""
        return _clean(rest)

    def _boundary(self) -> int | None:
        for match in BOUNDARY.finditer(self._buffer):
            words = self._buffer[: match.end()].split()
            if words and words[-1].lower().lstrip("(\"'") in ABBREVIATIONS:
                continue
            return match.end()
        return None


def _clean(text: str) -> list[str]:
    """The text as it should be spoken: no markdown, single spaces; nothing if it is empty."""
    spoken = " ".join(MARKUP.sub("", text).split())
    return [spoken] if spoken else []
