"""The single-index model (SPEC.md §3): y = σ⋆(⟨β⋆, x⟩) + ε, x ~ N(0, Σ), learned by one step
on the first layer of a two-layer network, then a ridge readout.

Modules: ``settings`` (validated settings, the methods' hyperparameters, ``check_method``),
``data`` (instances and batches, from :mod:`layerwise.problems.seeding`), ``methods`` (the
registry of one-step methods), ``onestep`` (the updates), ``readout``, ``metrics``, ``run``
(the protocol as tidy rows), ``theory`` (deterministic equivalents), ``claims``, ``figures``
and ``experiments`` (registration only). The many-step variant (claim C17) is the problem
:mod:`layerwise.problems.single_index_many_steps`.
"""
