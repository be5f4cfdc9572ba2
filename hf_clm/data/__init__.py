"""Text to blocks: sources, corpus, held-out split, tokenizer, blocks, collator, attention scope, prepare."""
