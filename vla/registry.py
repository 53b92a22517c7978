"""Looking up a draccus ChoiceRegistry by name, shared by the head and tokenizer registries."""

from __future__ import annotations

import difflib

import draccus


def choice_class(registry: type[draccus.ChoiceRegistry], name: str, what: str) -> type:
    """The class registered under `name` in `registry`; a ValueError listing the known names (and the closest one
    to a typo) otherwise. what: e.g. "action head", in the message."""
    known = sorted(registry.get_known_choices())
    if name not in known:
        hint = difflib.get_close_matches(name, known, n=1)
        suggestion = f" Did you mean '{hint[0]}'?" if hint else ""
        raise ValueError(f"unknown {what} '{name}'; registered: {known}.{suggestion}")
    return registry.get_choice_class(name)
