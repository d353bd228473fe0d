"""Pieces of the trainer (``segformer.train``): the step and the recipe's choices that shape it (``step``), the
optimiser and schedule (``optim``), the data order and its recipe plumbing (``data``), the training state
(``state``), checkpoint files (``checkpoint``), the run folder, its checkpoints and Ctrl-C (``run``), the logs
(``runlog``), the losses (``losses``) and the model cards of the saved weights (``card``)."""
