"""Token counts against known values, with no network: OpenAI's cookbook, measured on the API."""

from __future__ import annotations

import socket
from collections.abc import Iterator

import pytest

from batchrun.core.tokens import counter_for, estimate_text

# From OpenAI's cookbook "How to count tokens with tiktoken", section 5: token ids per encoding.
KNOWN_IDS = {
    "o200k_base": {
        "antidisestablishmentarianism": [493, 129901, 376, 160388, 21203, 2367],
        "2 + 2 = 4": [17, 659, 220, 17, 314, 220, 19],
        "お誕生日おめでとう": [8930, 9697, 243, 128225, 8930, 17693, 4344, 48669],
        "tiktoken is great!": [83, 8251, 2488, 382, 2212, 0],
    },
    "cl100k_base": {
        "antidisestablishmentarianism": [519, 85342, 34500, 479, 8997, 2191],
        "2 + 2 = 4": [17, 489, 220, 17, 284, 220, 19],
        "お誕生日おめでとう": [33334, 45918, 243, 21990, 9080, 33334, 62004, 16556, 78699],
    },
}

# The cookbook's chat example, whose prompt tokens the API reported as 129 for gpt-3.5-turbo
# and gpt-4, and 124 for gpt-4o and gpt-4o-mini (section 6).
EXAMPLE_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that "
        "translates corporate jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more "
        "bandwidth to touch base on opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean "
        "for the client deliverable.",
    },
]


@pytest.fixture(autouse=True)
def unplugged(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No network: any attempt to open a non-loopback connection fails the test."""
    real = socket.socket.connect

    def connect(self: socket.socket, address: object) -> object:
        host = address[0] if isinstance(address, tuple) else address
        if host not in ("127.0.0.1", "::1", "localhost"):
            raise AssertionError(f"tried to reach {address}")
        return real(self, address)  # type: ignore[arg-type]

    monkeypatch.setattr(socket.socket, "connect", connect)
    counter_for.cache_clear()
    yield
    counter_for.cache_clear()


@pytest.mark.parametrize(
    ("model", "encoding"), [("gpt-4o-mini", "o200k_base"), ("gpt-4", "cl100k_base")]
)
def test_known_token_ids(model: str, encoding: str) -> None:
    counter = counter_for(model)
    assert counter.name == encoding and counter.exact
    for text, ids in KNOWN_IDS[encoding].items():
        assert counter._encoding is not None
        assert counter._encoding.encode(text) == ids
        assert counter.text(text) == len(ids)


@pytest.mark.parametrize(
    ("model", "prompt_tokens"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ],
)
def test_chat_overhead_matches_what_the_api_reported(model: str, prompt_tokens: int) -> None:
    assert counter_for(model).chat(EXAMPLE_MESSAGES) == prompt_tokens


@pytest.mark.parametrize(
    ("model", "encoding"),
    [
        ("gpt-4o-2024-08-06", "o200k_base"),
        ("gpt-4.1-nano", "o200k_base"),
        ("o3", "o200k_base"),
        ("o4-mini", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-4-turbo", "cl100k_base"),
    ],
)
def test_model_families_map_to_their_encodings(model: str, encoding: str) -> None:
    counter = counter_for(model)
    assert (counter.name, counter.exact) == (encoding, True)


def test_chinese_text_counts_exactly_and_differs_by_encoding() -> None:
    text = "这款电水壶烧水很快，外观也很漂亮，推荐购买！"
    o200k, cl100k = counter_for("gpt-4o").text(text), counter_for("gpt-4").text(text)
    assert 10 <= o200k < cl100k <= 2 * len(text)  # o200k packs Chinese tighter than cl100k
    assert counter_for("gpt-4o").texts([text, "", "hi"]) == [o200k, 0, 1]


def test_other_models_get_an_estimate_that_is_honest_about_chinese() -> None:
    counter = counter_for("qwen-max")
    assert (counter.name, counter.exact) == ("estimate", False)
    chinese = "这款电水壶烧水很快，外观也很漂亮，推荐购买！"
    assert counter.text(chinese) >= len(chinese.replace("，", "").replace("！", ""))
    assert estimate_text("") == 0
    english = "The kettle boils quickly and looks nice; I would recommend buying it."
    exact = counter_for("gpt-4o").text(english)
    assert 0.7 * exact <= counter.text(english) <= 1.6 * exact


def test_custom_gpts_are_counted_but_labelled_estimates() -> None:
    counter = counter_for("gpt-4-gizmo-g-B3hgivKK9")
    assert not counter.exact and counter.text("hello world") == 2


def test_images_and_parts_make_the_count_an_estimate() -> None:
    counter = counter_for("gpt-4o")
    messages = [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "What is this?"},
                {"type": "image_url", "image_url": {"url": "x"}},
            ],
        }
    ]
    assert counter.chat(messages) > 85
    assert not counter.chat_is_exact(messages)
    assert counter.chat_is_exact([{"role": "user", "content": "hi"}])
