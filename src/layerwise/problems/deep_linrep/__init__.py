"""Deep linear representation learning: the student ``F G_L ⋯ G_1`` on linrep's teacher.

Modules: ``settings`` (linrep's settings plus ``depth``; the methods' parameters), ``data``
(linrep's instances plus the middle layers' start), ``methods`` (sgd, adam, kfac = exact
layer-wise Gauss–Newton, library_kfac), ``run`` (linrep's driver with these methods),
``theory``, ``claims`` (C16), ``figures`` and ``experiments`` (registration).
"""
