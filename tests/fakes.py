"""What the tests put in place of what cannot run here (a hosted large model), and the policies
the in-process gateways of the tests serve."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Sequence

from gateway.errors import EscalationFailed
from gateway.escalation import EscalationDelta, EscalationReply
from gateway.types import Document, Message, SamplingParams

POLICIES = {
    "granite": "name: granite\nreturn_at: 0.0\n",
    # return_at 1.0 can never be met (the highest confidence is 0.95):
    "ask-large": (
        "name: ask-large\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
        "on_escalation_error: return_local\n"
    ),
    "ask-large-or-withhold": (
        "name: ask-large-or-withhold\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
        "on_escalation_error: withhold\nwithhold_message: Not sure.\n"
    ),
    "ask-large-or-fail": (
        "name: ask-large-or-fail\nreturn_at: 1.0\nescalate_at: 0.0\nescalate_to: large\n"
        "on_escalation_error: error\n"
    ),
    "refuse": "name: refuse\nreturn_at: 1.0\nwithhold_message: Not sure enough.\n",
}


class FakeEscalator:
    """Answers as a large model would, or fails, and counts its calls; it knows the escalation
    models `targets` (none: no policy may escalate, so it is never called)."""

    def __init__(self, targets: Iterable[str] = ("large",)) -> None:
        self.fail = False
        self.calls = 0
        self.answer = "The large model's answer."
        self._targets = set(targets)

    @property
    def targets(self) -> set[str]:
        return set(self._targets)

    async def complete(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> EscalationReply:
        self.calls += 1
        if self.fail:
            raise EscalationFailed(f"escalation to {target!r} failed: APIError")
        return EscalationReply(
            text=self.answer,
            finish_reason="stop",
            model="large-model-v1",
            prompt_tokens=11,
            completion_tokens=5,
            cost=0.0042,
        )

    async def stream(
        self,
        target: str,
        messages: Sequence[Message],
        documents: Sequence[Document],
        sampling: SamplingParams,
    ) -> AsyncIterator[EscalationDelta]:
        reply = await self.complete(target, messages, documents, sampling)
        for word in reply.text.split(" "):
            yield EscalationDelta(text=word + " ")
        yield EscalationDelta(text="", reply=reply)
