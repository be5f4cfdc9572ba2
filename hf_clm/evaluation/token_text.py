"""What text each token stands for: its UTF-8 bytes and characters, so that a score in nats per
token becomes bits per byte and per character (byte-level BPE tokens decoded through GPT-2's
byte alphabet)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import torch
from transformers import PreTrainedTokenizerBase
from transformers.convert_slow_tokenizer import bytes_to_unicode


@dataclass(frozen=True)
class TokenText:
    """UTF-8 bytes and characters each vocabulary id stands for (0 for special tokens)."""

    bytes: torch.Tensor
    chars: torch.Tensor


def token_bytes(token: str, byte_level: bool) -> bytes:
    """The bytes one vocabulary entry decodes to, without the context-dependent clean-ups of
    ``decode`` (byte-level BPE maps each byte to one printable character; SentencePiece writes a
    space as '▁' and unknown bytes as '<0xNN>')."""
    if byte_level:
        return bytes(byte_decoder()[c] for c in token)
    match = re.fullmatch(r"<0x([0-9A-Fa-f]{2})>", token)
    if match:
        return bytes([int(match.group(1), 16)])
    return token.replace("▁", " ").encode("utf-8")


@lru_cache(maxsize=1)
def byte_decoder() -> dict[str, int]:
    return {c: b for b, c in bytes_to_unicode().items()}


def is_byte_level(tokenizer: PreTrainedTokenizerBase) -> bool:
    return '"ByteLevel"' in tokenizer.backend_tokenizer.to_str()


def token_text(tokenizer: PreTrainedTokenizerBase) -> TokenText:
    vocab = tokenizer.get_vocab()
    size = max(len(tokenizer), max(vocab.values()) + 1)
    n_bytes, n_chars = np.zeros(size, dtype=np.int64), np.zeros(size, dtype=np.int64)
    special = set(tokenizer.all_special_ids) | {i for i, t in tokenizer.added_tokens_decoder.items() if t.special}
    added = set(tokenizer.added_tokens_decoder)
    byte_level = is_byte_level(tokenizer)
    for token, index in vocab.items():
        if index in special:
            continue
        raw = token.encode("utf-8") if index in added else token_bytes(token, byte_level)
        n_bytes[index] = len(raw)
        n_chars[index] = sum((b & 0xC0) != 0x80 for b in raw)  # bytes that start a UTF-8 character
    return TokenText(torch.from_numpy(n_bytes), torch.from_numpy(n_chars))
