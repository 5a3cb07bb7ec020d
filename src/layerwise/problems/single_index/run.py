"""One grid point of the single-index protocol for a group of seeds, as tidy rows.

Protocol (SPEC.md §3, Ba et al. 2022): draw the instance (Σ, β⋆) and initialization (W0, a) of
every seed; take one step on W with the batch (X1, y1) of n samples; fit the ridge readout on a
fresh batch (X2, y2) with the penalty chosen on a fresh validation batch; test on fresh data.
Every method of the task sees the same instance, initialization and batches of a seed.

Columns of the returned table (one row per seed × method label):

- ``seed``, ``method`` (label), ``algorithm``, ``lr``, ``damping``, ``n``, ``width``, and the
  settings ``d``, ``n_over_d``, ``kappa``, ``link``;
- spike of ΔW = W1 − W0: ``spike_align_beta``, ``spike_align_sigma_beta``,
  ``spike_align_sigma_weighted``, ``spike_separation`` (NaN for ``rf``, where ΔW = 0, and for
  ``muon`` with the exact polar factor, whose singular values are all equal: no spike);
- row alignments ‖ΔW b‖/(‖ΔW‖F‖b‖) with b = β⋆ and Σβ⋆ (:func:`.metrics.row_alignment`,
  defined with or without a spike): ``row_align_beta``, ``row_align_sigma_beta``, and their
  closed form for the exact muon step (:func:`.theory.polar_row_alignment`, NaN otherwise):
  ``theory_row_align_beta``, ``theory_row_align_sigma_beta``;
- the vector v the theory describes (sgd, kfac, batchnorm use X1ᵀy1/n; kfac also applies
  (Σ̂x + λG I)⁻¹; shampoo's spike is exactly sgd's, so it uses sgd's v): ``v_align_beta``,
  ``v_align_sigma_beta``, and ``spike_align_v`` = |cos(u, v)|;
- theory for v (:mod:`.theory`): ``theory_align_beta`` (sgd, kfac, shampoo),
  ``theory_align_sigma_beta`` (sgd, shampoo), ``theory_cap`` = cos(Σβ⋆, β⋆) (every row: a
  property of the instance);
- readout (NaN when ``settings.readout`` is off): ``ridge_penalty``, ``validation_mse``,
  ``test_mse``, ``excess_risk``;
- ``initial_output_rms``: the root mean square of f0 on X1 (≈ 0 is what the theory assumes).
"""

from __future__ import annotations

import math

import pandas as pd
import torch
from torch import Tensor

from layerwise.experiments.registry import MethodSpec, RunTask

from . import metrics, onestep, theory
from .data import make_instance, sample
from .methods import first_layer
from .readout import feature_map, ridge_readout
from .settings import Polar, SingleIndexSettings, check_methods


def _theory(
    spec: MethodSpec, moments: theory.LinkMoments, eigenvalues: Tensor, b: Tensor, n: int
) -> tuple[Tensor | None, Tensor | None]:
    match spec.name:
        case "sgd" | "shampoo":  # shampoo's spike is sgd's (onestep.shampoo_direction)
            return (
                theory.sgd_alignment(moments, eigenvalues, b, n),
                theory.sgd_alignment_sigma_beta(moments, eigenvalues, b, n),
            )
        case "kfac":
            return theory.kfac_alignment(moments, eigenvalues, b, n, spec.params.damping), None
        case _:
            return None, None


def _exact_polar(spec: MethodSpec) -> bool:
    return spec.name == "muon" and spec.params.polar == Polar.SVD


def _polar_theory(
    spec: MethodSpec, eigenvalues: Tensor, b: Tensor, settings: SingleIndexSettings
) -> dict[str, Tensor] | None:
    """Closed-form row alignments of the exact muon step where they exist (else None)."""
    n, width, d = settings.n, settings.width, settings.d
    if not _exact_polar(spec) or (width < min(n, d)):
        return None
    return {
        "beta": theory.polar_row_alignment(eigenvalues, b, n, width),
        "sigma_beta": theory.polar_row_alignment(eigenvalues, eigenvalues * b, n, width),
    }


def run_seeds(
    settings: SingleIndexSettings,
    methods: dict[str, MethodSpec],
    seeds: tuple[int, ...],
    device: str = "cpu",
) -> pd.DataFrame:
    """The protocol for ``seeds`` (vectorized) and every method; tidy rows (module docstring)."""
    check_methods(settings, methods)
    instance = make_instance(settings, seeds).to(device)
    n = settings.n
    x1, y1, _ = sample(instance, "step", n)
    if settings.readout:
        train = sample(instance, "readout", settings.readout_size)[:2]
        validation = sample(instance, "validation", settings.n_validation)[:2]
        test = sample(instance, "test", settings.n_test)
    covariance = instance.covariance
    eigenvalues = instance.eigenvalues.cpu()
    b = (instance.eigenvectors.transpose(-1, -2) @ instance.beta.unsqueeze(-1)).squeeze(-1).cpu()
    moments = theory.link_moments(settings.link, settings.noise_std)
    cap = theory.alignment_cap(eigenvalues, b)
    f0 = onestep.network_output(instance.w0, instance.a, x1, settings.activation)
    initial_rms = f0.pow(2).mean(-1).sqrt().cpu()
    sgd_vector = (x1.transpose(-1, -2) @ y1.unsqueeze(-1)).squeeze(-1) / n
    nan = torch.full((len(seeds),), math.nan, dtype=torch.float64)

    frames = []
    for label, spec in methods.items():
        w1 = first_layer(spec.name, instance, x1, y1, spec.params)
        delta = w1 - instance.w0
        columns: dict[str, Tensor] = {}
        if spec.name == "rf" or _exact_polar(spec):
            for key in ("spike_align_beta", "spike_align_sigma_beta", "spike_align_sigma_weighted"):
                columns[key] = nan
            columns["spike_separation"] = nan
            direction = None
        else:
            # Flattened spectra (shampoo, muon) make subspace iteration crawl: use the SVD.
            spectral = spec.name in ("shampoo", "muon")
            top = metrics.spike_by_svd(delta) if spectral else metrics.spike(delta)
            direction = top.direction
            for key, value in metrics.alignments(direction, instance.beta, covariance).items():
                columns[f"spike_align_{key}"] = value
            columns["spike_separation"] = top.separation
        if spec.name == "rf":
            columns.update(row_align_beta=nan, row_align_sigma_beta=nan)
        else:
            for key, value in metrics.row_alignments(delta, instance.beta, covariance).items():
                columns[f"row_align_{key}"] = value
        polar_theory = _polar_theory(spec, eigenvalues, b, settings)
        for key in ("beta", "sigma_beta"):
            columns[f"theory_row_align_{key}"] = nan if polar_theory is None else polar_theory[key]
        vector = None
        if spec.name in ("sgd", "batchnorm", "shampoo"):
            vector = sgd_vector
        elif spec.name == "kfac":
            damped = onestep.empirical_covariance(x1) + spec.params.damping * torch.eye(
                settings.d, dtype=x1.dtype, device=x1.device
            )
            vector = torch.linalg.solve(damped, sgd_vector.unsqueeze(-1)).squeeze(-1)
        if vector is None:
            columns.update(v_align_beta=nan, v_align_sigma_beta=nan, spike_align_v=nan)
        else:
            v_align = metrics.alignments(vector, instance.beta, covariance)
            columns["v_align_beta"] = v_align["beta"]
            columns["v_align_sigma_beta"] = v_align["sigma_beta"]
            columns["spike_align_v"] = metrics.cosine(direction, vector)
        predicted, predicted_sigma = _theory(spec, moments, eigenvalues, b, n)
        columns["theory_align_beta"] = nan if predicted is None else predicted
        columns["theory_align_sigma_beta"] = nan if predicted_sigma is None else predicted_sigma
        columns["theory_cap"] = cap
        if settings.readout:
            features = feature_map(
                w1, settings.activation, batchnorm_on=train[0] if spec.name == "batchnorm" else None
            )
            readout = ridge_readout(features, train, validation, test, settings.ridge_grid)
            columns["ridge_penalty"] = readout.penalty
            columns["validation_mse"] = readout.validation_mse
            columns["test_mse"] = readout.test_mse
            columns["excess_risk"] = readout.excess_risk
        else:
            for key in ("ridge_penalty", "validation_mse", "test_mse", "excess_risk"):
                columns[key] = nan
        columns["initial_output_rms"] = initial_rms
        frame = pd.DataFrame({key: value.detach().cpu().numpy() for key, value in columns.items()})
        frame.insert(0, "seed", list(seeds))
        frame.insert(1, "method", label)
        frame.insert(2, "algorithm", spec.name)
        frame.insert(3, "lr", getattr(spec.params, "lr", math.nan))
        frame.insert(4, "damping", getattr(spec.params, "damping", math.nan))
        frame.insert(5, "n", n)
        frame.insert(6, "width", settings.width)
        # The settings the claims and figures group by, whether or not the grid varies them.
        frame.insert(7, "d", settings.d)
        frame.insert(8, "n_over_d", settings.n_over_d)
        frame.insert(9, "kappa", settings.kappa)
        frame.insert(10, "link", str(settings.link))
        frames.append(frame)
    return pd.concat(frames, ignore_index=True)


def run_task(task: RunTask) -> pd.DataFrame:
    """The registered run function: one grid point, its methods and seeds."""
    return run_seeds(task.settings, dict(task.methods), tuple(task.seeds), task.device)
