"""Secrets kept out of every message: the value of any ``*token*`` key or flag, and anything
shaped like a Hugging Face token, replaced by ``***`` (an error line is pasted into issues and logs)."""

from __future__ import annotations

import re

# A Hugging Face access token: hf_ and at least ten letters or digits.
HUB_TOKEN = re.compile(r"\bhf_[A-Za-z0-9]{10,}")
MASK = "***"
# A key naming a token (hub_token, HF_TOKEN, my-token), not tokens or a tokenizer, nor token_counts;
# and a flag (--token, --hub-token).
TOKEN_NAME = r"(?![\w-]*token_count)(?:[\w-]*[_-]token(?![a-z])[\w-]*|token[_-][\w-]+)"
TOKEN_FLAG = r"--?[\w-]*token(?![a-z])[\w-]*"
# --hub_token X, --hub-token=X, hub_token: X, 'hub_token': 'X' (a flag or key naming a token, then its value)
TOKEN_VALUE = re.compile(r"(?P<key>(?:" + TOKEN_FLAG + r"(?:\s+|=))|(?:" + TOKEN_NAME + r"""['"]?\s*[:=]\s*))"""
                         r"""(?P<value>\[[^\]]*\]|\{[^}]*\}|'[^']*'|"[^"]*"|[^\s,;'"\]}]+)""", re.IGNORECASE)
# KEY must be WHAT, not VALUE (a recipe's type or range error naming a token key): VALUE to the clause's end
TOKEN_NOT_VALUE = re.compile(r"(?P<key>\b" + TOKEN_NAME + r"\b[^;]*?\bnot\s+)(?P<value>[^;]+)", re.IGNORECASE)
KEEP_WORDS = {"must", "is", "has", "needs", "applies", "takes", "and", "or", "not", "in", "of", "the"}


def masked_value(match: re.Match) -> str:
    value = match["value"]
    if value.lower() in KEEP_WORDS:  # "hub_token is ...": a sentence about the key, no value
        return match[0]
    return match["key"] + MASK


def masked_text(text: str) -> str:
    """``text`` with every token value and every Hub-token-shaped string replaced by ``***``."""
    text = TOKEN_NOT_VALUE.sub(lambda m: m["key"] + MASK, text)
    text = TOKEN_VALUE.sub(masked_value, text)
    return HUB_TOKEN.sub(MASK, text)
