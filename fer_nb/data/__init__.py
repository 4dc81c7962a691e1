"""Datasets of the book: SynthFACS and loaders for the real datasets, all in one schema."""
from fer_nb.data.schema import AUS, EXPRESSIONS, FaceArrays, au_index, concat

__all__ = ["AUS", "EXPRESSIONS", "FaceArrays", "au_index", "concat"]
