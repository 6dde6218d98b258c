"""Model pricing in USD per million tokens, keyed by model-name prefix (longest prefix wins).

Unknown models cost 0 and say so (`known=False`), so a dashboard never shows a made-up figure.
Prices are list prices as published by each provider; update them here when they change.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Price:
    input_per_m: float
    output_per_m: float


PRICES: dict[str, Price] = {
    # OpenAI
    "gpt-4o-mini": Price(0.15, 0.60),
    "gpt-4o": Price(2.50, 10.00),
    "gpt-4.1-nano": Price(0.10, 0.40),
    "gpt-4.1-mini": Price(0.40, 1.60),
    "gpt-4.1": Price(2.00, 8.00),
    "gpt-5-nano": Price(0.05, 0.40),
    "gpt-5-mini": Price(0.25, 2.00),
    "gpt-5": Price(1.25, 10.00),
    "o4-mini": Price(1.10, 4.40),
    "o3-mini": Price(1.10, 4.40),
    "o3": Price(2.00, 8.00),
    "gpt-3.5-turbo": Price(0.50, 1.50),
    # Anthropic
    "claude-3-5-haiku": Price(0.80, 4.00),
    "claude-3-5-sonnet": Price(3.00, 15.00),
    "claude-3-7-sonnet": Price(3.00, 15.00),
    "claude-sonnet-4": Price(3.00, 15.00),
    "claude-opus-4": Price(15.00, 75.00),
    "claude-haiku-4": Price(1.00, 5.00),
    # Google
    "gemini-1.5-flash": Price(0.075, 0.30),
    "gemini-1.5-pro": Price(1.25, 5.00),
    "gemini-2.0-flash": Price(0.10, 0.40),
    "gemini-2.5-flash": Price(0.30, 2.50),
    "gemini-2.5-pro": Price(1.25, 10.00),
    # open models as served by Groq and others
    "llama-3.1-8b": Price(0.05, 0.08),
    "llama-3.3-70b": Price(0.59, 0.79),
    "mistral-small": Price(0.10, 0.30),
    "mistral-large": Price(2.00, 6.00),
    # troupe's own: the offline model and the fake cost nothing, and that is known
    "gemma-3-270m": Price(0.0, 0.0),
    "fake": Price(0.0, 0.0),
}


def price(model: str) -> Price | None:
    name = model.strip().lower()
    if "/" in name:  # "openai/gpt-4o", "groq/llama-3.3-70b-versatile"
        name = name.rsplit("/", 1)[1]
    best = max((prefix for prefix in PRICES if name.startswith(prefix)), key=len, default=None)
    return PRICES[best] if best else None


def cost(model: str, input_tokens: int, output_tokens: int) -> tuple[float, bool]:
    """(USD, known). Unknown models cost 0 with known=False."""
    found = price(model)
    if found is None:
        return 0.0, False
    return (input_tokens * found.input_per_m + output_tokens * found.output_per_m) / 1_000_000, True
