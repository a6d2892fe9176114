"""Scripted message-taking: how a call continues when the LLM is down, slow or talking garbage.

No model is needed: over the next turns it asks for the caller's name, the reason for the call and
a callback number, saves the message through the same `take_message` tool the model would use,
then offers a transfer when someone can take one. The caller never hears that anything broke
beyond one apology, and the lead is kept.
"""

from __future__ import annotations

import enum
import json
import re
from dataclasses import dataclass
from typing import Any

from agent.tools import Ending, Toolbox
from booking.models import LeadOutcome

OPENING = (
    "I'm sorry, I can't reach our booking system right now, but I can take a message and "
    "have someone call you back."
)
# When no model is configured at all (`frontdesk chat` without FRONTDESK_OPENAI_*): nothing is
# down, so say what is true.
NO_MODEL_OPENING = (
    "I can't book or answer questions here until a language model is "
    "configured, but I can take a message and have someone call you back."
)
YES = re.compile(
    r"\b(yes|yeah|yep|sure|ok|okay|correct|right|fine|please|that's it|it is)\b", re.IGNORECASE
)
NO = re.compile(r"\b(no|nope|not|don't|different|another|other)\b", re.IGNORECASE)
NAME_PREFIX = re.compile(
    r"^(hi|hello|yes|yeah|sure|ok|okay)?[,.\s]*"
    r"(my name is|my name's|this is|it's|it is|i'm|i am|name is)?\s*",
    re.IGNORECASE,
)


class Step(enum.Enum):
    NAME = "name"
    REASON = "reason"
    CALLBACK = "callback"
    TRANSFER = "transfer"
    DONE = "done"


@dataclass(frozen=True)
class Turn:
    """What the script says, and how the call ends (None: it goes on)."""

    say: str
    ending: Ending | None = None


class MessageTaking:
    """The script's state over the turns of one call."""

    def __init__(self, toolbox: Toolbox, *, apology: str = OPENING) -> None:
        self.toolbox = toolbox
        self.apology = apology
        self.step = Step.NAME
        self.name: str | None = toolbox.state.caller_name
        self.reason: str | None = None
        self._asked_number_twice = False
        if self.name:
            self.step = Step.REASON

    def to_json(self) -> dict[str, Any]:
        """The script's place, JSON-able, so another worker can go on with it."""
        return {
            "apology": self.apology,
            "step": self.step.value,
            "name": self.name,
            "reason": self.reason,
            "asked_number_twice": self._asked_number_twice,
        }

    @classmethod
    def restore(cls, toolbox: Toolbox, data: dict[str, Any]) -> MessageTaking:
        """The script at the place `to_json` saved, over this worker's toolbox."""
        script = cls(toolbox, apology=str(data.get("apology") or OPENING))
        script.step = Step(data.get("step", Step.NAME.value))
        name, reason = data.get("name"), data.get("reason")
        script.name = str(name) if name is not None else None
        script.reason = str(reason) if reason is not None else None
        script._asked_number_twice = bool(data.get("asked_number_twice"))
        return script

    def opening(self) -> str:
        """The first words after the switch: the apology and the first question."""
        return f"{self.apology} {self._question()}"

    async def answer(self, text: str) -> Turn:
        """Take the caller's answer to the last question and say the next thing."""
        text = text.strip()
        if self.step is Step.NAME:
            self.name = _name(text)
            self.step = Step.REASON
            return Turn(f"Thank you, {self.name}. {self._question()}")
        if self.step is Step.REASON:
            self.reason = text or "no reason given"
            self.step = Step.CALLBACK
            return Turn(self._question())
        if self.step is Step.CALLBACK:
            return await self._callback(text)
        if self.step is Step.TRANSFER:
            self.step = Step.DONE
            if YES.search(text) and not NO.search(text):
                return Turn(
                    "Please hold while I put you through.",
                    Ending("caller asked for a person", self._transfer_number()),
                )
            return Turn("Thank you for calling. Goodbye!", Ending("message taken", None))
        return Turn("Thank you for calling. Goodbye!", Ending("message taken", None))

    def _question(self) -> str:
        if self.step is Step.NAME:
            return "May I have your name, please?"
        if self.step is Step.REASON:
            return "And what is your call about?"
        if self.toolbox.caller_phone:
            spaced = " ".join(self.toolbox.caller_phone.removeprefix("+1"))
            return f"Is the number you're calling from, {spaced}, the best one to reach you?"
        return "What is the best number to call you back on?"

    async def _callback(self, text: str) -> Turn:
        caller = self.toolbox.caller_phone
        if caller and YES.search(text) and not re.search(r"\d", text):
            number: str | None = caller
        elif re.search(r"\d", text):
            number = text
        elif not self._asked_number_twice:
            self._asked_number_twice = True
            return Turn("What number should we call you back on?")
        else:
            number = caller
        if number is None or not await self._save(number):
            if not self._asked_number_twice:
                self._asked_number_twice = True
                return Turn(
                    "Sorry, I didn't catch that number. Could you say it again, with the area code?"
                )
            await self._save_without_number(text)
        thanks = "Thank you. I've passed your message on, and someone will call you back soon."
        if self._transfer_number():
            self.step = Step.TRANSFER
            return Turn(f"{thanks} Would you like me to try to transfer you to someone now?")
        self.step = Step.DONE
        return Turn(f"{thanks} Goodbye!", Ending("message taken", None))

    async def _save(self, number: str) -> bool:
        """Save the message through the take_message tool; False if the number was unusable."""
        arguments = {
            "name": self.name or "unknown caller",
            "reason": self.reason or "",
            "callback_number": number,
        }
        result = json.loads(await self.toolbox.call("take_message", json.dumps(arguments)))
        return bool(result.get("saved"))

    async def _save_without_number(self, heard: str) -> None:
        """Keep the lead even without a usable number; what the caller said goes in the reason."""
        await self.toolbox.record_lead(
            name=self.name,
            phone=self.toolbox.caller_phone,
            reason=f"{self.reason} (callback number heard as: {heard!r})",
            outcome=LeadOutcome.MESSAGE,
        )

    def _transfer_number(self) -> str | None:
        facts = self.toolbox.facts
        if facts.business.transfer_number and facts.is_open(self.toolbox.clock.now()):
            return facts.business.transfer_number
        return None


def _name(text: str) -> str:
    name = NAME_PREFIX.sub("", text, count=1).strip(" .,!")
    return name or text.strip() or "unknown caller"
