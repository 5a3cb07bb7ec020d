"""Registration of the ``mlp`` problem and its ``mlp-optimizers`` experiment (claim MLP1).

Each method is its own run (``split_methods``) of one seed; pairing comes from the per-seed
streams (:func:`~layerwise.problems.mlp.data.streams`), not from sharing a run.
"""

from __future__ import annotations

from layerwise.experiments.registry import (
    Experiment,
    Problem,
    register_experiment,
    register_problem,
)

from . import claims, figures
from .methods import METHOD_MODELS
from .run import run_task
from .settings import MLPSettings

PROBLEM = register_problem(
    Problem(name="mlp", settings_model=MLPSettings, method_models=METHOD_MODELS)
)

EXPERIMENT = register_experiment(
    Experiment(
        name="mlp-optimizers",
        problem="mlp",
        description=(
            "Two-layer tanh MLP student on a synthetic teacher–student regression task, "
            "trained with each optimizer from the same teacher, data, initialisation and batches."
        ),
        run=run_task,
        claims=(claims.MLP1,),
        figures={"losses": figures.losses},
        captions={
            "losses": "Median over seeds (band: interquartile range) of the training (left) and "
            "held-out (right) mean squared error against minibatch steps for every optimizer: "
            "every held-out curve should end below half its start.",
        },
        seeds_per_run=1,
        split_methods=True,
    )
)
