"""Scoring text: the one log-likelihood engine, the evaluate metric, explain, and reports."""
