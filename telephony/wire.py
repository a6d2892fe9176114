"""Twilio's wire format, parsed: ConversationRelay messages and the voice webhooks' forms.

Everything Twilio sends becomes one of these models the moment it arrives; nothing past
`telephony/` sees a raw dict. Field names follow Twilio's documentation (camelCase on the
websocket, PascalCase in webhook forms) through aliases.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, field_validator, model_validator

# Control characters (NUL above all, which PostgreSQL refuses in text) never come from Twilio.
_CONTROL = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
Sid = Annotated[str, Field(pattern=r"^[A-Za-z0-9]{2,64}$")]
Address = Annotated[str, Field(max_length=256)]  # E.164, "client:alice", "sip:a@b", "anonymous"


def _no_control_characters(values: Mapping[str, Any]) -> Mapping[str, Any]:
    for name, value in values.items():
        if isinstance(value, str) and _CONTROL.search(value):
            raise ValueError(f"{name} holds control characters")
    return values


class _Message(BaseModel):
    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)


# ---- ConversationRelay: Twilio to us -----------------------------------------------------


class _Inbound(_Message):
    @model_validator(mode="before")
    @classmethod
    def _printable(cls, values: Any) -> Any:
        return _no_control_characters(values) if isinstance(values, Mapping) else values


class Setup(_Inbound):
    type: Literal["setup"]
    session_id: str = Field(default="", alias="sessionId", max_length=64)
    call_sid: Sid = Field(alias="callSid")
    from_number: Address | None = Field(default=None, alias="from")
    to_number: Address | None = Field(default=None, alias="to")
    direction: str | None = None
    custom_parameters: dict[str, str] = Field(default_factory=dict, alias="customParameters")


class Prompt(_Inbound):
    type: Literal["prompt"]
    voice_prompt: str = Field(default="", alias="voicePrompt")
    lang: str | None = None
    last: bool = True


class Interrupt(_Inbound):
    type: Literal["interrupt"]
    utterance_until_interrupt: str = Field(default="", alias="utteranceUntilInterrupt")
    # Documented both as a number and as a string of digits.
    duration_until_interrupt_ms: int | None = Field(default=None, alias="durationUntilInterruptMs")


class Dtmf(_Inbound):
    type: Literal["dtmf"]
    digit: str


class RelayError(_Inbound):
    type: Literal["error"]
    description: str = ""


class Unknown(_Inbound):
    """A message type this code does not know (Twilio adds types); logged and ignored."""

    type: str = Field(max_length=64)


InboundMessage = Annotated[
    Setup | Prompt | Interrupt | Dtmf | RelayError, Field(discriminator="type")
]
_inbound: TypeAdapter[Setup | Prompt | Interrupt | Dtmf | RelayError] = TypeAdapter(InboundMessage)
KNOWN_TYPES = frozenset({"setup", "prompt", "interrupt", "dtmf", "error"})


Inbound = Setup | Prompt | Interrupt | Dtmf | RelayError | Unknown


def parse_inbound(raw: str | bytes) -> Inbound:
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


class WebhookForm(BaseModel):
    """A webhook's form (voice or messaging), parsed from its fields."""

    model_config = ConfigDict(populate_by_name=True, extra="ignore", frozen=True)

    @classmethod
    def parse(cls, form: Mapping[str, Any]) -> Self:
        """The model of `form`; raises `pydantic.ValidationError` naming the bad fields."""
        return cls.model_validate({k: v for k, v in form.items() if isinstance(v, str)})

    @model_validator(mode="before")
    @classmethod
    def _printable(cls, values: Any) -> Any:
        return _no_control_characters(values) if isinstance(values, Mapping) else values


class Form(WebhookForm):
    """A voice webhook's form: what every callback carries."""

    call_sid: Sid = Field(alias="CallSid")
    from_number: Address | None = Field(default=None, alias="From")
    to_number: Address | None = Field(default=None, alias="To")
    call_status: str | None = Field(default=None, alias="CallStatus", max_length=32)

    @field_validator("from_number", "to_number", mode="before")
    @classmethod
    def _blank_is_none(cls, value: Any) -> Any:
        return value or None


class IncomingCall(Form):
    """`POST /twilio/voice`: a call rings the business's number."""


class GatherResult(Form):
    """The `<Gather input="speech">` action: what the caller said (empty on silence)."""

    speech_result: str = Field(default="", alias="SpeechResult")
    confidence: float | None = Field(default=None, alias="Confidence")

    @field_validator("confidence", mode="before")
    @classmethod
    def _blank_confidence(cls, value: Any) -> Any:
        return value or None


class ConnectAction(Form):
    """The `<Connect action>` callback when a ConversationRelay session ends."""

    session_id: str | None = Field(default=None, alias="SessionId", max_length=64)
    session_status: str | None = Field(default=None, alias="SessionStatus")
    handoff_data: str | None = Field(default=None, alias="HandoffData")
    error_code: str | None = Field(default=None, alias="ErrorCode", max_length=16)
    error_message: str | None = Field(default=None, alias="ErrorMessage")

    def handoff(self) -> Handoff | None:
        """Our handoff, if the session ended with one (a malformed one counts as none)."""
        if not self.handoff_data:
            return None
        try:
            return Handoff.model_validate_json(self.handoff_data)
        except ValueError:
            return None


class DialAction(Form):
    """The `<Dial action>` callback: how the transfer went."""

    dial_call_status: str | None = Field(default=None, alias="DialCallStatus")

    @property
    def connected(self) -> bool:
        return self.dial_call_status in {"completed", "answered"}


class CallStatusUpdate(Form):
    """The status callback: the call's state, with its duration once it is over."""

    # Twilio ends a call after 24 hours; anything past a week is not a duration it sent.
    call_duration: int | None = Field(default=None, alias="CallDuration", ge=0, le=7 * 86400)

    @field_validator("call_duration", mode="before")
    @classmethod
    def _blank_duration(cls, value: Any) -> Any:
        return value or None


# ---- Messaging webhooks ------------------------------------------------------------------------

MAX_SMS_BODY = 1600  # Twilio's longest message (ten concatenated segments)


class IncomingSms(WebhookForm):
    """`POST /twilio/sms`: a text to the business's number."""

    message_sid: Sid = Field(alias="MessageSid")
    from_number: Address = Field(alias="From", min_length=1)
    to_number: Address = Field(alias="To", min_length=1)
    body: str = Field(default="", alias="Body", max_length=MAX_SMS_BODY)


class SmsStatusUpdate(WebhookForm):
    """`POST /twilio/sms/status`: an outbound text's status (queued, sent, delivered, ...)."""

    message_sid: Sid = Field(alias="MessageSid")
    message_status: str = Field(alias="MessageStatus", pattern=r"^[a-z_]{1,32}$")
    error_code: str | None = Field(default=None, alias="ErrorCode", pattern=r"^\d{1,10}$")

    @field_validator("error_code", mode="before")
    @classmethod
    def _blank_code(cls, value: Any) -> Any:
        return value or None
