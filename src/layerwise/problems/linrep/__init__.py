"""Linear representation learning (SPEC §2): y = F⋆ G⋆ x + ε, learn row(G⋆).

Modules: ``settings`` (validated settings and hyperparameters, ``check_method``), ``data``
(instances and data streams), ``metrics``, ``algorithms``, ``second_order`` and ``library``
(the methods), ``driver`` (batched simulation and step-size tuning), ``run`` (the experiments'
run functions), ``theory``, ``claims``, ``figures`` and ``experiments`` (registration only).
"""
