"""Twilio's wire format, parsed: ConversationRelay messages and the voice webhooks' forms.

Everything Twilio sends becomes one of these models the moment it arrives; nothing past
`telephony/` sees a raw dict. Field names follow Twilio's documentation (camelCase on the
websocket, PascalCase in webhook forms) through aliases.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator


class _Message(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


# ---- ConversationRelay: Twilio to us -----------------------------------------------------


class Setup(_Message):
    type: Literal["setup"]
    session_id: str = Field(default="", alias="sessionId")
    call_sid: str = Field(alias="callSid")
    from_number: str | None = Field(default=None, alias="from")
    to_number: str | None = Field(default=None, alias="to")
    direction: str | None = None
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")


class Prompt(_Message):
    type: Literal["prompt"]
    voice_prompt: str = Field(default="", alias="voicePrompt")
    lang: str | None = None
    last: bool = True


class Interrupt(_Message):
    type: Literal["interrupt"]
    utterance_until_interrupt: str = Field(default="", alias="utteranceUntilInterrupt")
    # Documented both as a number and as a string of digits.
    duration_until_interrupt_ms: int | None = Field(default=None,
                                                    alias="durationUntilInterruptMs")


class Dtmf(_Message):
    type: Literal["dtmf"]
    digit: str


class RelayError(_Message):
    type: Literal["error"]
    description: str = ""


class Unknown(_Message):
    """A message type this code does not know (Twilio adds types); logged and ignored."""

    type: str


InboundMessage = Annotated[Setup | Prompt | Interrupt | Dtmf | RelayError,
                           Field(discriminator="type")]
_inbound: TypeAdapter[Setup | Prompt | Interrupt | Dtmf | RelayError] = TypeAdapter(
    InboundMessage
)
KNOWN_TYPES = frozenset({"setup", "prompt", "interrupt", "dtmf", "error"})


def parse_inbound(raw: str | bytes) -> Setup | Prompt | Interrupt | Dtmf | RelayError | Unknown:
    """One websocket frame as a typed message; raises `pydantic.ValidationError` if malformed."""
    probe = Unknown.model_validate_json(raw)
    if probe.type not in KNOWN_TYPES:
        return probe
    return _inbound.validate_json(raw)


# ---- ConversationRelay: us to Twilio -----------------------------------------------------


class TextToken(_Message):
    """Text for Twilio to speak; `last` closes the turn."""

    type: Literal["text"] = "text"
    token: str
    last: bool = False


class EndSession(_Message):
    """End the relay session; Twilio then calls the `<Connect action>` URL with `HandoffData`."""

    type: Literal["end"] = "end"
    handoff_data: str | None = Field(default=None, alias="handoffData")


def dump_outbound(message: TextToken | EndSession) -> str:
    return message.model_dump_json(by_alias=True, exclude_none=True)


class Handoff(BaseModel):
    """What we put in `handoffData` (a JSON string) and read back at the action URL."""

    model_config = ConfigDict(populate_by_name=True, frozen=True)

    reason: str
    transfer_to: str | None = Field(default=None, alias="transferTo")

    def dump(self) -> str:
        return self.model_dump_json(by_alias=True)


# ---- Voice webhooks (application/x-www-form-urlencoded) ------------------------------------


class _Form(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    call_sid: str = Field(alias="CallSid", min_length=1)
    from_number: str | None = Field(default=None, alias="From")
    to_number: str | None = Field(default=None, alias="To")
    call_status: str | None = Field(default=None, alias="CallStatus")

    @classmethod
    def parse(cls, form: Mapping[str, Any]) -> Any:
        return cls.model_validate({k: v for k, v in form.items() if isinstance(v, str)})

    @field_validator("from_number", "to_number", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return value or None


class IncomingCall(_Form):
    """`POST /twilio/voice`: a call rings the business's number."""


class GatherResult(_Form):
    """The `<Gather input="speech">` action: what the caller said (empty on silence)."""

    speech_result: str = Field(default="", alias="SpeechResult")
    confidence: float | None = Field(default=None, alias="Confidence")


class ConnectAction(_Form):
    """The `<Connect action>` callback when a ConversationRelay session ends."""

    session_status: str | None = Field(default=None, alias="SessionStatus")
    handoff_data: str | None = Field(default=None, alias="HandoffData")
    error_message: str | None = Field(default=None, alias="ErrorMessage")

    def handoff(self) -> Handoff | None:
        """Our handoff, if the session ended with one (a malformed one counts as none)."""
        if not self.handoff_data:
            return None
        try:
            return Handoff.model_validate_json(self.handoff_data)
        except ValueError:
            return None


class DialAction(_Form):
    """The `<Dial action>` callback: how the transfer went."""

    dial_call_status: str | None = Field(default=None, alias="DialCallStatus")

    @property
    def connected(self) -> bool:
        return self.dial_call_status in {"completed", "answered"}


class CallStatusUpdate(_Form):
    """The status callback: the call's state, with its duration once it is over."""

    call_duration: int | None = Field(default=None, alias="CallDuration")

    @field_validator("call_duration", mode="before")
    @classmethod
    def _blank_duration(cls, value: Any) -> Any:
        return value or None
