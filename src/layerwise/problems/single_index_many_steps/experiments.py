"""Registration of the ``single_index_many_steps`` problem and its ``single-index-many-steps``
experiment (claim C17, beyond the paper): T small first-layer steps of sgd, kfac, adam and the
library's shampoo, soap and muon.

All methods of a config run together (``split_methods=False``) so that they share the
instance, initialization and batches of each seed; seeds run in groups of
:data:`~layerwise.problems.single_index.experiments.SEEDS_PER_RUN`, as in the one-step
experiments.
"""

from __future__ import annotations

from layerwise.experiments.registry import (
    Experiment,
    Problem,
    register_experiment,
    register_problem,
)
from layerwise.problems.single_index.experiments import SEEDS_PER_RUN

from . import claims, figures
from .methods import METHOD_MODELS
from .run import run_task
from .settings import ManyStepsSettings, check_method

PROBLEM = register_problem(
    Problem(
        name="single_index_many_steps",
        settings_model=ManyStepsSettings,
        method_models=METHOD_MODELS,
        check_method=check_method,
    )
)

MANY_STEPS = register_experiment(
    Experiment(
        name="single-index-many-steps",
        problem="single_index_many_steps",
        description="T small first-layer steps per method: does the one-step picture hold? (C17)",
        run=run_task,
        claims=(claims.C17,),
        figures={"over_steps": figures.over_steps_figure},
        captions={
            "over_steps": "Alignment of the accumulated first-layer update's spike with β⋆ "
            "(left panels) and Σβ⋆ (right panels) against the step t over T small steps "
            "(median, IQR over seeds), every method, with the chance level 1/√d (dashed); "
            "step 1 is the one-step direction of each method.",
        },
        seeds_per_run=SEEDS_PER_RUN,
        split_methods=False,
    )
)
