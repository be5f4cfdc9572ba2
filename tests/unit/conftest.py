"""The unit tier: pure functions and the commands called in this process, seconds each; ``make
test-fast`` runs this folder alone. Shared fixtures live in ``tests/conftest.py``; code shared
with an integration module in ``tests/support/``."""
