"""Sizing a run before it runs: memory, fit and time (the plan), and the rehearsal that measures it."""
