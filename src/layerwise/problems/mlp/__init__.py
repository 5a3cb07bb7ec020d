"""The ``mlp`` problem: a small teacher–student regression task that trains a two-layer tanh
MLP with every optimizer (SGD, AdamW and the project's Shampoo, SOAP, Muon, KFAC).

Modules: ``settings`` (the task's settings and the methods' hyperparameters), ``data`` (the
teacher, its samples and the seeded streams), ``methods`` (the optimizer registry), ``run`` (the
student and the training loop), ``claims`` (MLP1), ``figures``, ``experiments`` (registration of
the problem and the ``mlp-optimizers`` experiment). The smallest complete problem of the
project: the template ``docs/adding_a_problem.md`` walks.
"""
