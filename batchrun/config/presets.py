"""Gateway presets: what `[endpoint] preset = "..."` sets, each key overridable in the job.

Errors need no per-gateway switch: the classifier recognises every seed gateway's shapes at
any status (`batchrun.protocol.outcome`), because a gateway may mix them. What differs per
gateway is where it lives, the headers it insists on, and how it bills.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from fnmatch import fnmatchcase


@dataclass(frozen=True)
class Preset:
    """One gateway's address, required headers and billing quirks."""

    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    # Model name patterns the gateway serves (and bills) as another model.
    price_as: Mapping[str, str] = field(default_factory=dict)
    # What non-streaming requests cost relative to the list price (bcwhkj bills them at half).
    non_stream_price_factor: float = 1.0
    about: str = ""


PRESETS: dict[str, Preset] = {
    "openai": Preset("https://api.openai.com/v1", about="OpenAI itself"),
    "302ai": Preset(
        "https://api.302.ai/v1",
        headers={"Accept": "application/json"},
        about="302.ai: requires Accept: application/json; detailed usage (cached, reasoning)",
    ),
    "bcwhkj": Preset(
        "https://yewu.bcwhkj.cn/v1",
        price_as={"gpt-3.5*": "gpt-4o-mini"},
        non_stream_price_factor=0.5,
        about=(
            "冰橙API: errors as {codes, mess} in HTTP 200 bodies; every gpt-3.5* model is "
            "served as gpt-4o-mini; non-streaming requests are billed at half"
        ),
    ),
    "anyapi": Preset(
        "https://www.anyapi.vip/v1",
        about="anyapi: custom GPTs as gpt-4-gizmo-<id> models (no known price)",
    ),
}


def priced_model(model: str, price_as: Mapping[str, str]) -> str:
    """The model whose price applies to `model` on a gateway that serves it as another."""
    for pattern, target in price_as.items():
        if fnmatchcase(model, pattern):
            return target
    return model
