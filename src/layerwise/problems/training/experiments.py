"""Registration of the ``training`` problem and its workloads ``training-digits``,
``training-tabular`` and ``training-lm`` (each decides T1, T2 and T3 for its workload).

Each method is its own run (``split_methods``), carrying all reported seeds (the tuning stage
runs once per method), so a sweep parallelizes over methods.
"""

from __future__ import annotations

from layerwise.experiments.registry import (
    Experiment,
    Problem,
    register_experiment,
    register_problem,
)

from . import claims, figures
from .run import run_task
from .settings import METHOD_MODELS, TrainingSettings

#: Reported seeds per run: all of a config's seeds, so the tuning stage is not repeated.
SEEDS_PER_RUN = 100

PROBLEM = register_problem(
    Problem(name="training", settings_model=TrainingSettings, method_models=METHOD_MODELS)
)

DESCRIPTIONS = {
    "digits": "Convolutional classifier of scikit-learn's bundled 8x8 digits.",
    "tabular": "MLP classifier of scikit-learn's bundled breast-cancer table.",
    "lm": "Causal character transformer on the Python standard library's source.",
}

EXPERIMENTS = {
    workload: register_experiment(
        Experiment(
            name=f"training-{workload}",
            problem="training",
            description=f"{text} Every optimizer under one warm-up + cosine schedule and step "
            "budget, its learning rate tuned on a grid with tuning seeds disjoint from the "
            "reported seeds; time to AdamW's median final validation loss.",
            run=run_task,
            claims=(claims.T1, claims.T2, claims.T3),
            figures={"curves": figures.curves},
            captions={
                "curves": "Median over reported seeds (band: interquartile range) of the "
                "validation loss against steps (left) and training wall-clock (right) for every "
                "optimizer, peers dashed, AdamW's target dotted: a curve that crosses the target "
                "left of AdamW's reaches it sooner.",
            },
            tables={"speed-up to AdamW's target": claims.speedup_table},
            seeds_per_run=SEEDS_PER_RUN,
            split_methods=True,
            timing_columns=("wall_seconds", "step_seconds"),
        )
    )
    for workload, text in DESCRIPTIONS.items()
}
