"""The ``training`` problem: real-data training workloads, time to AdamW's target.

Three workloads on data that ships with a package (no download at run time): a convolutional
classifier of scikit-learn's 8x8 digits, an MLP on the breast-cancer table, and a small causal
character transformer on the source of the Python standard library. Every optimizer — SGD with
momentum, AdamW, the project's Shampoo, SOAP, Muon, KFAC, EKFAC and, where installed, the peer
libraries' versions of the same methods — trains under one schedule and a fixed step budget,
its learning rate tuned on a fixed grid with tuning seeds disjoint from the reported seeds.

Modules: ``settings`` (workload settings and the methods' hyperparameters), ``data``,
``models``, ``methods`` (optimizers, schedule, state memory), ``run`` (the training loop and the
tuning stage), ``claims`` (targets, time to target, the speed-up table, T1–T3), ``figures``,
``experiments`` (registration).
"""
