"""Losses of the five papers, one per module (see each module's docstring for its equations)."""
