"""Pieces of the trainer (``segformer.train``): optimiser and schedule, data order, checkpoints, training state."""
