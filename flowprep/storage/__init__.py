"""The store on disk: LMDB shards, record encoding, checksums, JPEG headers, settings, locks, metadata."""
