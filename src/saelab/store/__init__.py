"""Activation stores on disk (sharded safetensors + manifest), shuffled reading, streaming, and
the sources that turn any training data into batches (sources.py, adapters.py, memory.py)."""

from saelab.store.adapters import open_source, shard_plan
from saelab.store.reader import ActivationStore, is_store
from saelab.store.shuffle import ShuffledBatches, tensor_batches
from saelab.store.sources import Feed, Labelled, LiveSource, Source, Want, WithGradients
from saelab.store.stream import stream_batches
from saelab.store.writer import capture_to_store

__all__ = ["ActivationStore", "Feed", "Labelled", "LiveSource", "ShuffledBatches", "Source",
           "Want", "WithGradients", "capture_to_store", "is_store", "open_source", "shard_plan",
           "stream_batches", "tensor_batches"]
