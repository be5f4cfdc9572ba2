"""The names of the files and folders a run directory (and a prepared folder) holds, in one place."""

from __future__ import annotations

# transformers.trainer_utils.PREFIX_CHECKPOINT_DIR, spelled here so that naming a file imports no
# library (the command line starts in a fraction of a second); a test keeps the two equal.
PREFIX_CHECKPOINT_DIR = "checkpoint"
# The finished-run marker: a run directory holding it (valid, matching its weights) is a finished run.
PERPLEXITY_FILENAME = "perplexity.json"
RECIPE_FILENAME = "recipe.yaml"
TOKEN_COUNTS_FILENAME = "token_counts.json"
TRAINER_STATE = "trainer_state.json"
TRAINING_ARGS = "training_args.bin"
REPORT_MD, REPORT_JSON = "report.md", "report.json"
CURVES_GLOB = "curves_by_*.png"
MODEL_CARD = "README.md"
# The model card tag that marks a README.md as the package's own card.
CARD_TAG = "hf_clm"
ADAPTER_CONFIG = "adapter_config.json"
MERGED_DIRNAME = "merged"
# In the merged folder: the digests of the adapter it was merged from (a push checks them against the run's).
MERGED_FROM = "merged_from.json"
TOKENIZER_FILE = "tokenizer.json"
CHECKPOINT_GLOB = f"{PREFIX_CHECKPOINT_DIR}-*"
# A prepared_dataset folder's description, written last.
PREPARED_FILENAME = "prepared.json"
# In a rehearsal's folder (train --rehearse K), written first and rewritten with the figures: a real run
# refuses that folder.
REHEARSAL_FILENAME = "rehearsal.json"
# One writer per folder: output_dir and prepared_dataset hold this while a job uses them.
LOCK_FILENAME = ".hf_clm.lock"

# Everything the package (and Trainer under it) writes into an output_dir; overwrite_output_dir
# removes these and nothing else. README.md only when it is the package's model card.
PACKAGE_OUTPUTS = (
    CHECKPOINT_GLOB, MERGED_DIRNAME, "runs", PERPLEXITY_FILENAME, REPORT_MD, REPORT_JSON,
    CURVES_GLOB, RECIPE_FILENAME, TOKEN_COUNTS_FILENAME, TRAINER_STATE, TRAINING_ARGS,
    "all_results.json", "train_results.json", "eval_results.json", "*.safetensors", "*.safetensors.index.json",
    "pytorch_model*.bin", "config.json", "generation_config.json", ADAPTER_CONFIG, "adapter_model.*",
    TOKENIZER_FILE, "tokenizer_config.json", "special_tokens_map.json", "added_tokens.json", "vocab.json",
    "merges.txt", "chat_template.jinja", "tokenizer.model",
)
