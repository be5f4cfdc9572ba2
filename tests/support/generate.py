"""Shared by tests/unit/test_generate.py and tests/integration/test_generate_processes.py."""


CONTEXT = 16


def prompt_of(tokenizer, n: int) -> str:
    text = " ".join(["the cat sat on the mat"] * 10)
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:n]
    prompt = tokenizer.decode(ids)
    assert len(tokenizer(prompt, add_special_tokens=False)["input_ids"]) == n
    return prompt
