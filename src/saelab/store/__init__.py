"""Activation stores on disk (sharded safetensors + manifest), shuffled reading, streaming."""

from saelab.store.reader import ActivationStore, is_store
from saelab.store.shuffle import ShuffledBatches, tensor_batches
from saelab.store.stream import stream_batches
from saelab.store.writer import capture_to_store

__all__ = ["ActivationStore", "ShuffledBatches", "capture_to_store", "is_store",
           "stream_batches", "tensor_batches"]
