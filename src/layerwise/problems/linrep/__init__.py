"""Linear representation learning (SPEC §2): y = F⋆ G⋆ x + ε, learn row(G⋆).

Modules: ``settings`` (validated settings and hyperparameters), ``data`` (instances and data
streams), ``metrics``, ``algorithms`` and ``second_order`` (the methods), ``driver`` (batched
simulation and step-size tuning), ``theory``, ``experiments`` (registered experiments),
``claims`` and ``figures``.
"""
