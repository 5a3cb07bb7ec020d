"""Registration of the linrep problem and its six experiments (SPEC §4) with their claims.

Every experiment runs each method on all of its seeds in one batched run (``seeds_per_run``
large, ``split_methods`` True: methods are independent runs that the runner can spread over
workers; pairing comes from the per-seed generators, not from sharing a run).
"""

from __future__ import annotations

from layerwise.experiments.registry import (
    Experiment,
    Problem,
    register_experiment,
    register_problem,
)
from layerwise.problems.linrep import claims, figures, run
from layerwise.problems.linrep.methods import METHOD_MODELS
from layerwise.problems.linrep.settings import LinrepSettings, check_method

#: All seeds of a method go in one run (the algorithms are vectorized over seeds).
SEEDS_PER_RUN = 1000

PROBLEM = register_problem(
    Problem(
        name="linrep",
        settings_model=LinrepSettings,
        method_models=METHOD_MODELS,
        check_method=check_method,
    )
)


def _experiment(
    name: str, description: str, run_function, claim_list, figure, caption: str
) -> Experiment:
    figure_name = name.removeprefix("linrep-")
    return register_experiment(
        Experiment(
            name=name,
            problem="linrep",
            description=description,
            run=run_function,
            claims=tuple(claim_list),
            figures={figure_name: figure},
            captions={figure_name: caption},
            seeds_per_run=SEEDS_PER_RUN,
            split_methods=True,
            timing_columns=("seconds_per_iteration",),
        )
    )


TRAJECTORIES = _experiment(
    "linrep-trajectories",
    "Training loss, subspace distance and transfer excess risk against iterations for every "
    "method (the paper's Figure 1 analogue).",
    run.run_trajectories,
    (),
    figures.trajectories,
    "Median over seeds (band: interquartile range) of the batch training loss, the subspace "
    "distance ‖P⊥U‖₂ and the transfer excess risk against iterations for every method: look for "
    "which methods drive the distance down and how fast.",
)
KAPPA = _experiment(
    "linrep-kappa",
    "Iterations to dist <= eps and the fitted contraction rate against κ(Σx) and κ(F⋆).",
    run.run_summary,
    (claims.C1, claims.C2, claims.C3),
    figures.kappa,
    "Median iterations to subspace distance ≤ ε against κ(Σx) (left) and κ(F⋆) (right), dashed "
    "lines the kfac prediction and the gradient-step bound, dotted the budget: kfac's curves "
    "should stay flat while sgd's and amd's rise.",
)
BASIS = _experiment(
    "linrep-basis",
    "Axis-aligned against rotated Σx for adam, batchnorm and kfac.",
    run.run_summary,
    (claims.C5, claims.C6),
    figures.basis,
    "Median iterations to ε against κ(Σx) with axis-aligned and with rotated Σx: adam should rise "
    "less on axis-aligned inputs than on rotated ones, batchnorm should still rise, kfac stay "
    "flat.",
)
TRANSFER = _experiment(
    "linrep-transfer",
    "Transfer excess risk against n_transfer for representations learned at an equal budget.",
    run.run_transfer,
    (claims.C7,),
    figures.transfer,
    "Median transfer excess risk against the number of transfer samples, for representations "
    "learned at an equal budget: lower is better, kfac's curve should lie below the others.",
)
FLOOR = _experiment(
    "linrep-floor",
    "Stationary subspace distance against samples per step (kfac: n − d; dfw: n/2 − d).",
    run.run_floor,
    (claims.C8,),
    figures.floor,
    "Median stationary subspace distance against n_eff − d on log axes, with a slope −½ reference "
    "line through kfac's first point: kfac's and dfw's points should follow that slope.",
)
SECOND_ORDER = _experiment(
    "linrep-second-order",
    "kfac against damped Gauss–Newton and damped Newton over a damping grid.",
    run.run_summary,
    (claims.C4,),
    figures.second_order,
    "Median iterations to ε of damped Gauss–Newton and Newton against the damping μ, one panel per"
    " κ(Σx), with kfac's medians as horizontal lines: the second-order curves above kfac's lines, "
    "or missing points (failures), mean they underperform.",
)
LAYERWISE = _experiment(
    "linrep-layerwise",
    "Iterations to dist <= eps against κ(Σx) and κ(F⋆) for the library optimizers (Shampoo, "
    "SOAP, Muon exact and amortized, KFAC, EKFAC) with sgd and kfac as anchors.",
    run.run_layerwise,
    (claims.C14, claims.C18),
    figures.layerwise,
    "Median iterations to ε (band: interquartile range, dotted grey line: the budget) against "
    "κ(Σx) at the smallest κF (left) and against κF at the smallest κ(Σx) (right), one line per "
    "method at its tuned step size: a flat line is κ-free like kfac, a rising one slows like sgd.",
)
