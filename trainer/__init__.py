"""trainer: spatial and temporal ConvNets trained from flowprep shards (see the issues for status)."""
