"""The names a user imports to read a store from Python (README, "Reading a store from Python"):
``from flowprep.store import FlowStore``. They are defined in :mod:`flowprep.storage`; the project's
own code imports them from there."""

from flowprep.storage.meta import VideoMeta
from flowprep.storage.shard import CorruptRecordError, StoreError
from flowprep.storage.store import FlowStore, ShardWriter

__all__ = ["CorruptRecordError", "FlowStore", "ShardWriter", "StoreError", "VideoMeta"]
