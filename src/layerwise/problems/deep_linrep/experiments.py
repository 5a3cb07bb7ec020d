"""Registration of the deep_linrep problem and its experiment ``deep-linrep-kappa`` (C16).

Like linrep's experiments, each method runs all of its seeds in one batched run (methods are
independent runs; pairing comes from the per-seed generators).
"""

from __future__ import annotations

from layerwise.experiments.registry import (
    Experiment,
    Problem,
    register_experiment,
    register_problem,
)
from layerwise.problems.deep_linrep import claims, figures, run
from layerwise.problems.deep_linrep.settings import (
    METHOD_MODELS,
    DeepLinrepSettings,
    check_method,
)

#: All seeds of a method go in one run (the methods are vectorized over seeds).
SEEDS_PER_RUN = 1000

PROBLEM = register_problem(
    Problem(
        name="deep_linrep",
        settings_model=DeepLinrepSettings,
        method_models=METHOD_MODELS,
        check_method=check_method,
    )
)

KAPPA = register_experiment(
    Experiment(
        name="deep-linrep-kappa",
        problem="deep_linrep",
        description="Iterations to dist <= eps against κ(Σx) and κF for the deep linear student "
        "F G_L⋯G_1 at L = 2, 3, 4: sgd, adam, layer-wise Gauss–Newton (kfac) and the library KFAC.",
        run=run.run_summary,
        claims=(claims.C16,),
        figures={"kappa": figures.kappa, "kappa_f": figures.kappa_f},
        captions={
            "kappa": "Median iterations to subspace distance ≤ ε (band: interquartile range over "
            "seeds) against κ(Σx), one panel per depth L, the kfac prediction "
            "log ε / log|1 − η| at each fixed η as a black line labelled with its η, the budget "
            "grey and labelled: kfac's curves should stay flat at every depth while sgd's rise.",
            "kappa_f": "Median iterations to subspace distance ≤ ε against κF = κ(F⋆) at "
            "κ(Σx) = 1, one panel per depth L, the kfac prediction at each fixed η as a black "
            "line labelled with its η, the budget grey and labelled: kfac's curves should stay "
            "flat while sgd's rise.",
        },
        seeds_per_run=SEEDS_PER_RUN,
        split_methods=True,
        timing_columns=("seconds_per_iteration",),
    )
)
