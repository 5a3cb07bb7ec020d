"""Registration of the ``single_index`` problem and its four experiments (SPEC.md §4 and C15).

- ``single-index-alignment`` (Figure 2 analogue): spike alignment against n/d for sgd and kfac
  at several κ, with theory lines; decides C9, C10, C11.
- ``single-index-risk`` (Figure 3 analogue): excess risk after the ridge readout against n/d for
  rf, sgd, kfac, adam, batchnorm, oracle; decides C12, C13.
- ``single-index-damping``: kfac alignment and risk against the damping λG at n/d <= 1 and
  large κ, with the damped deterministic equivalent; decides C11-damped.
- ``single-index-layerwise``: one exact shampoo and muon step against sgd and kfac; decides
  C15 (beyond the paper).

The many-step variant (``single-index-many-steps``, C17) is its own problem,
:mod:`layerwise.problems.single_index_many_steps`.

All methods of a config run together (``split_methods=False``) so that they share the
instance, initialization and batches of each seed; seeds are vectorized in groups of
:data:`SEEDS_PER_RUN`.
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
from .settings import SingleIndexSettings, check_method

#: Seeds per run: memory grows like seeds × (n + n_test) × d, about 0.6 GB at d = 512, n/d = 8.
SEEDS_PER_RUN = 5

PROBLEM = register_problem(
    Problem(
        name="single_index",
        settings_model=SingleIndexSettings,
        method_models=METHOD_MODELS,
        check_method=check_method,
    )
)

ALIGNMENT = register_experiment(
    Experiment(
        name="single-index-alignment",
        problem="single_index",
        description="Spike alignment of one sgd/kfac step against n/d and κ, with theory lines.",
        run=run_task,
        claims=(claims.C9, claims.C10, claims.C11),
        figures={"alignment": figures.alignment_figure, "sgd_bias": figures.sgd_bias_figure},
        captions={
            "alignment": "Median over seeds (band: interquartile range) of the alignment "
            "cos(spike, β⋆) of one sgd and one kfac step against n/d, one panel per link and κ, "
            "with the theory line for v (dashed) and sgd's cap cos(Σβ⋆, β⋆) (dotted): kfac "
            "should rise towards 1, sgd stay under its cap.",
            "sgd_bias": "Median alignment of sgd's spike with β⋆ and with Σβ⋆ against n/d, with "
            "the theory lines: the Σβ⋆ curve above the β⋆ curve is sgd's bias towards Σβ⋆.",
        },
        seeds_per_run=SEEDS_PER_RUN,
        split_methods=False,
    )
)

RISK = register_experiment(
    Experiment(
        name="single-index-risk",
        problem="single_index",
        description="Excess risk after the ridge readout against n/d for every one-step method.",
        run=run_task,
        claims=(claims.C12, claims.C13),
        figures={"risk": figures.risk_figure, "features": figures.feature_alignment_figure},
        captions={
            "risk": "Median excess test risk after the ridge readout against n/d for every "
            "method, one panel per κ (log scale; the oracle's near-zero median is in the title "
            "when below the axis): lower is better, kfac should sit below sgd and sgd below rf.",
            "features": "Median alignment cos(spike, β⋆) of every method's one-step features "
            "against n/d, one panel per κ: it explains the risk ordering (better-aligned "
            "features, lower risk).",
        },
        seeds_per_run=SEEDS_PER_RUN,
        split_methods=False,
    )
)

DAMPING = register_experiment(
    Experiment(
        name="single-index-damping",
        problem="single_index",
        description="kfac alignment and risk against the damping at n/d <= 1 and large κ.",
        run=run_task,
        claims=(claims.C11_DAMPED,),
        figures={"damping": figures.damping_figure},
        captions={
            "damping": "kfac's median spike alignment (with the damped theory, dashed) and "
            "excess risk against the damping λG, one pair of panels per n/d, sgd's median as "
            "a horizontal line: look for the damping where kfac beats sgd and for the theory "
            "matching the points.",
        },
        seeds_per_run=SEEDS_PER_RUN,
        split_methods=False,
    )
)

LAYERWISE_STEP = register_experiment(
    Experiment(
        name="single-index-layerwise",
        problem="single_index",
        description="One exact shampoo and muon step against sgd and kfac: β⋆ or Σβ⋆? (C15)",
        run=run_task,
        claims=(claims.C15,),
        figures={
            "row_alignment": figures.row_alignment_figure,
            "sigma_beta": figures.sigma_beta_figure,
            "spike": figures.spike_figure,
        },
        captions={
            "row_alignment": "Share of each one-step update's energy along β⋆, "
            "‖ΔW β⋆‖/(‖ΔW‖F‖β⋆‖) (median, IQR over seeds), against n/d, one panel per κ: kfac "
            "approaches 1, the most damped shampoo stays with sgd, less damped shampoo falls "
            "towards chance, and the exact muon step sits on its closed form (dashed), which is "
            "the chance level 1/√d (dotted) at n ≥ d.",
            "sigma_beta": "The same share along Σβ⋆: sgd and damped shampoo approach 1, muon "
            "stays at its closed form (dashed) near chance 1/√d (dotted).",
            "spike": "Alignment cos(u, β⋆) of the top singular direction u of the sgd, kfac "
            "and shampoo steps against n/d (median, IQR over seeds), with the theory lines "
            "for sgd (dashed) and kfac (dotted): every shampoo label's spike coincides with "
            "sgd's (points side by side), whatever its damping.",
        },
        seeds_per_run=SEEDS_PER_RUN,
        split_methods=False,
    )
)
