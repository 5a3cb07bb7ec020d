"""Many small first-layer steps in the single-index model (claim C17, problem
``single_index_many_steps``): the one-step problem's network, instance and initialization,
trained for T small steps instead of one large one.

Modules: ``settings`` (the one-step settings plus T, what is recorded and the batch policy; the
methods' hyperparameters; ``check_method``), ``data`` (the step batches, drawn from the
single-index streams), ``methods`` (the step rules and their norm-matched learning rates),
``run`` (T steps per seed and method as tidy rows), ``claims`` (C17), ``figures`` and
``experiments`` (registration only).
"""
