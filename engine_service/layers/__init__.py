"""Building blocks shared by the model files. Linear and embedding layers know their tensor-parallel shard."""
