"""Corpora: the byte store, readers that fill it, and loaders that batch it."""

from untok.data.ingest import ingest, open_data
from untok.data.loader import TrainSampler, UnitStream
from untok.data.store import ByteStore

__all__ = ["ByteStore", "TrainSampler", "UnitStream", "ingest", "open_data"]
