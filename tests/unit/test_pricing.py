import pytest

from troupe.config.pricing import cost, price


def test_longest_prefix_wins():
    assert price("gpt-4o-mini-2024-07-18") == price("gpt-4o-mini")
    assert price("gpt-4o-2024-08-06") == price("gpt-4o")
    assert price("gpt-4o-mini").input_per_m < price("gpt-4o").input_per_m


def test_provider_prefix_and_case_are_ignored():
    assert price("openai/GPT-4o") == price("gpt-4o")


def test_cost_is_per_million_tokens():
    usd, known = cost("gpt-4o", 1_000_000, 1_000_000)
    assert known and usd == pytest.approx(12.5)


def test_unknown_models_cost_nothing_and_say_so():
    assert cost("my-private-model", 1000, 1000) == (0.0, False)


def test_local_and_fake_are_free_and_known():
    assert cost("gemma-3-270m", 5000, 5000) == (0.0, True)
    assert cost("fake", 5000, 5000) == (0.0, True)
