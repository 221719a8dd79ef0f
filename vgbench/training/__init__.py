"""Training through Lightning: one module, in-memory batches, the cell runner."""
