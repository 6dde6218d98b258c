"""The agent loop: call the model, run the persona's tools, repeat a bounded number of times.

Plain logic shared by sessions, persona actors and tasks. It streams `TurnEvent`s as the model speaks
and leaves the new transcript messages and the metrics it spent in `outcome` when it finishes.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

from opentelemetry.trace import SpanKind

from troupe.clients.chat_model import ChatModel
from troupe.config.pricing import cost
from troupe.core import tracing
from troupe.core.chat import ChatMessage, ModelRequest, ToolCall, ToolSpec, Usage, estimate_tokens
from troupe.core.errors import BudgetExceeded
from troupe.core.messages import Allowance, Delta, Done, MetricsDelta, ToolCalls, TurnEvent
from troupe.core.tracing import Parent


class ToolBox(Protocol):
    """The tools a persona may run itself (as opposed to client tools, which go back to the caller)."""

    def specs(self) -> tuple[ToolSpec, ...]: ...

    async def run(self, call: ToolCall) -> str: ...


class NoTools:
    def specs(self) -> tuple[ToolSpec, ...]:
        return ()

    async def run(self, call: ToolCall) -> str:
        return f"Tool {call.name!r} is not available."


@dataclass
class Outcome:
    new_messages: list[ChatMessage] = field(default_factory=list)
    delta: MetricsDelta = MetricsDelta()
    finish_reason: str = "stop"
    text: str = ""


BudgetGuard = Callable[[float], None]  # raises BudgetExceeded given the cost spent so far this turn


def budget_guard(allowance: Allowance) -> BudgetGuard:
    """Stops a piece of work before a model call that its session or persona can no longer afford."""

    def guard(spent_now: float) -> None:
        session = allowance.session_spent + spent_now
        if allowance.session_budget > 0 and session >= allowance.session_budget:
            raise BudgetExceeded(
                f"This session has spent ${allowance.session_spent:.4f} of its ${allowance.session_budget:.2f} budget."
            )
        if allowance.persona_spent + spent_now >= allowance.persona_budget:
            raise BudgetExceeded(
                f"{allowance.persona} has spent ${allowance.persona_spent:.4f} of a "
                f"${allowance.persona_budget:.2f} budget."
            )

    return guard


def exceeded_scope(allowance: Allowance, spent_now: float) -> str:
    """Which budget a BudgetExceeded came from: 'session' or 'persona'."""
    session = allowance.session_spent + spent_now
    return "session" if allowance.session_budget > 0 and session >= allowance.session_budget else "persona"


def turn_usage(delta: MetricsDelta) -> Usage:
    return Usage(input_tokens=delta.input_tokens, output_tokens=delta.output_tokens, estimated=delta.tokens_estimated)


def usage_delta(model_name: str, usage: Usage) -> MetricsDelta:
    usd, known = cost(model_name, usage.input_tokens, usage.output_tokens)
    return MetricsDelta(
        input_tokens=usage.input_tokens,
        output_tokens=usage.output_tokens,
        llm_calls=1,
        cost_usd=usd,
        cost_known=known,
        tokens_estimated=usage.estimated,
    )


class AgentLoop:
    def __init__(
        self,
        *,
        speaker: str,
        model: ChatModel,
        model_name: str,
        toolbox: ToolBox | None = None,
        max_iterations: int = 4,
        temperature: float | None = None,
        budget_guard: BudgetGuard | None = None,
        trace: Parent = None,
    ) -> None:
        self.speaker = speaker
        self.trace = trace  # the parent of its model calls' spans (None: the current span)
        self.model = model
        self.model_name = model_name
        self.toolbox = toolbox or NoTools()
        self.max_iterations = max_iterations
        self.temperature = temperature
        self.budget_guard = budget_guard
        self.outcome = Outcome()
        # the turn so far, kept as it streams: a caller who hangs up still has their words kept and paid for
        self._new: list[ChatMessage] = []
        self._delta = MetricsDelta()
        self._parts: list[str] = []
        self._calls: list[ToolCall] = []
        self._request: ModelRequest | None = None
        self._usage = Usage()
        self._texts: list[str] = []

    async def run(
        self,
        messages: Sequence[ChatMessage],
        *,
        client_tools: Sequence[ToolSpec] = (),
        temperature: float | None = None,
        max_tokens: int | None = None,
        stop: Sequence[str] = (),
    ) -> AsyncIterator[TurnEvent]:
        convo = list(messages)
        own = self.toolbox.specs()
        own_names = {spec.name for spec in own}
        delta = MetricsDelta()
        new: list[ChatMessage] = self._new
        texts: list[str] = self._texts
        for iteration in range(self.max_iterations):
            if self.budget_guard:
                self.budget_guard(delta.cost_usd)
            last = iteration == self.max_iterations - 1
            request = ModelRequest(
                messages=tuple(convo),
                model=self.model_name,
                speaker=self.speaker,
                temperature=temperature if temperature is not None else self.temperature,
                max_tokens=max_tokens,
                stop=tuple(stop),
                # the last iteration offers no tools, so the model has to answer in words
                tools=() if last else (*own, *client_tools),
            )
            parts: list[str] = []
            calls: list[ToolCall] = []
            usage = Usage()
            self._parts, self._calls, self._request, self._usage = parts, calls, request, usage
            # not made current: this generator yields, and a current span would leak to its consumer
            span = tracing.start("model.stream", parent=self.trace, kind=SpanKind.CLIENT)
            if span.is_recording():
                span.set_attributes(self._span_of())
            error: BaseException | None = None
            try:
                async for chunk in self.model.stream(request):
                    if chunk.content:
                        parts.append(chunk.content)
                        yield Delta(text=chunk.content)
                    calls.extend(chunk.tool_calls)
                    if chunk.usage:
                        usage = usage + chunk.usage
                        self._usage = usage
            except (GeneratorExit, asyncio.CancelledError):
                span.set_attribute("troupe.interrupted", True)  # the caller went away: not a failure
                raise
            except BaseException as exc:
                error = exc
                raise
            finally:
                if span.is_recording():
                    span.set_attributes(_usage_of(usage, calls))
                tracing.end(span, error)
            delta = delta.plus(usage_delta(self.model_name, usage))
            self._delta, self._request = delta, None
            text = "".join(parts)
            texts.append(text)
            reply = ChatMessage(role="assistant", content=text or None, tool_calls=tuple(calls))
            convo.append(reply)
            new.append(reply)
            if not calls:
                self.outcome = Outcome(new, delta, "stop", "".join(texts))
                yield Done(finish_reason="stop", usage=turn_usage(delta), cost_usd=delta.cost_usd)
                return
            client_calls = [c for c in calls if c.name not in own_names]
            for call in calls:
                if call.name not in own_names:
                    continue
                delta = delta.plus(MetricsDelta(tool_calls=1))
                self._delta = delta
                result = await self._run_tool(call)
                tool_msg = ChatMessage(role="tool", content=result, tool_call_id=call.id, name=call.name)
                convo.append(tool_msg)
                new.append(tool_msg)
            if client_calls:
                delta = delta.plus(MetricsDelta(tool_calls=len(client_calls)))
                # the caller's own tools: hand them back; its results arrive with the next request
                self.outcome = Outcome(new, delta, "tool_calls", "".join(texts))
                yield ToolCalls(tool_calls=tuple(client_calls))
                yield Done(finish_reason="tool_calls", usage=turn_usage(delta), cost_usd=delta.cost_usd)
                return
        self.outcome = Outcome(new, delta, "length", "".join(texts))
        yield Done(finish_reason="length", usage=turn_usage(delta), cost_usd=delta.cost_usd)

    def _span_of(self) -> dict[str, str]:
        return {
            "troupe.persona": self.speaker,
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": self.model_name,
        }

    def interrupted(self) -> Outcome:
        """The turn as far as it got when it was cut off (the caller hung up, the model failed, the turn
        timed out): the messages so far, the reply so far as the caller heard it, and what was spent.
        A model call cut off before it reported usage is charged from estimates."""
        new = list(self._new)
        delta = self._delta
        if self._request is not None:  # a model call was in flight
            text = "".join(self._parts)
            if text or self._calls:
                new.append(ChatMessage(role="assistant", content=text or None, tool_calls=tuple(self._calls)))
            usage = self._usage
            if not usage.input_tokens and not usage.output_tokens:
                prompt = " ".join(m.content or "" for m in self._request.messages)
                usage = Usage(input_tokens=estimate_tokens(prompt), output_tokens=estimate_tokens(text), estimated=True)
            delta = delta.plus(usage_delta(self.model_name, usage))
        texts = [*self._texts, "".join(self._parts)] if self._request is not None else self._texts
        return Outcome(new, delta, "interrupted", "".join(texts))

    async def _run_tool(self, call: ToolCall) -> str:
        try:
            json.loads(call.arguments or "{}")
        except json.JSONDecodeError:
            return f"Error: the arguments for {call.name} were not valid JSON."
        try:
            return await self.toolbox.run(call)
        except Exception as exc:  # a failing tool is reported to the model, never kills the turn
            return f"Error running {call.name}: {exc}"


def _usage_of(usage: Usage, calls: list[ToolCall]) -> dict[str, int]:
    """A model call's span attributes once it ended: what it used, never what was said."""
    return {
        "gen_ai.usage.input_tokens": usage.input_tokens,
        "gen_ai.usage.output_tokens": usage.output_tokens,
        "troupe.tool_calls": len(calls),
    }


async def answer_once(loop: AgentLoop, messages: Sequence[ChatMessage]) -> Outcome:
    """Run the loop to the end without streaming (delegated tasks, consultations, life activities)."""
    async for event in loop.run(messages):
        del event
    return loop.outcome
