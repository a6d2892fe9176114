"""How long Twilio takes to speak what we send: the relay waits this long before it ends a call."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpeechPace:
    """How long Twilio takes to speak the text we send, erring long: a clipped goodbye is worse
    than a second of silence before the hang-up or the transfer."""

    lead: float = 1.0  # from a turn's first token to its first sound: synthesis and the network
    words_per_second: float = 2.3  # synthetic voices speak some 150-170 words a minute

    def seconds(self, text: str) -> float:
        return len(text.split()) / self.words_per_second
