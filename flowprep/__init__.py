"""flowprep: batch optical flow for video datasets, stored as JPEG-compressed LMDB shards."""

__version__ = "0.2.0"
