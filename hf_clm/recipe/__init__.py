"""The recipe: its typed schema, its key names, reading YAML and flags, and checking values."""
