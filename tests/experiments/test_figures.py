"""The project's figures can be read: names, legends, theory lines, nothing hidden.

Every linrep, deep-linrep, single-index (one step and many steps), training and mlp figure is
drawn from a tiny synthetic table of the shape its experiment stores, and checked: legend texts
are display names (no raw identifier, no underscore), at 8 pt or more, outside every axes' data
area; each legend entry names an artist with data inside its axes' limits; theory lines on one
axes differ in style; no two method series on one axes share colour, marker and line style.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from matplotlib.collections import Collection
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

from layerwise.experiments import plots
from layerwise.problems.deep_linrep import figures as deep_linrep_figures
from layerwise.problems.linrep import figures as linrep_figures
from layerwise.problems.mlp import figures as mlp_figures
from layerwise.problems.single_index import figures as single_index_figures
from layerwise.problems.single_index_many_steps import figures as many_steps_figures
from layerwise.problems.training import figures as training_figures

CONFIGS = Path(plots.__file__).parents[1] / "configs"
RNG_SEED = 0


# --- tiny tables of the stored shape ---------------------------------------------------------

#: linrep-kappa's labels: (label, algorithm, lr, tuned).
KAPPA_METHODS = (
    ("sgd", "sgd", 0.25, True),
    ("amd", "amd", 1.0, True),
    ("dfw", "dfw", 1.0, True),
    ("kfac", "kfac", 1.0, True),
    ("kfac_one", "kfac", 1.0, False),
    ("kfac_half", "kfac", 0.5, False),
    ("kfac_eighth", "kfac", 0.125, False),
    ("adam", "adam", 0.125, True),
)


def _linrep_rows(methods, points, value, seeds=(0, 1), **fixed) -> pd.DataFrame:
    """One row per (point, method, seed): ``value(label, point)`` plus the stored columns."""
    rows = []
    for point in points:
        for label, algorithm, lr, tuned in methods:
            for seed in seeds:
                base = dict(
                    seed=seed,
                    method=label,
                    algorithm=algorithm,
                    lr=lr,
                    lr_tuned=tuned,
                    damping=0.0,
                    kappa_x=1.0,
                    kappa_f=1.0,
                    basis="rotated",
                    eps=1e-3,
                    budget=8000,
                )
                rows.append({**base, **fixed, **point, **value(label, point, seed)})
    return pd.DataFrame(rows)


def kappa_table() -> pd.DataFrame:
    def iterations(label, point, seed):
        grows = {"sgd": 60, "amd": 20, "adam": 150, "dfw": 8}
        fixed = {"kfac": 1, "kfac_one": 1, "kfac_half": 11, "kfac_eighth": 55}
        count = fixed.get(label) or grows[label] * point["kappa_x"] * point["kappa_f"] ** 2
        return dict(iterations_to_eps=float(min(count + seed, 8000)))

    points = [dict(kappa_x=k, kappa_f=1.0) for k in (1.0, 10.0, 100.0)]
    points += [dict(kappa_x=1.0, kappa_f=k) for k in (4.0,)]
    return _linrep_rows(KAPPA_METHODS, points, iterations)


def basis_table() -> pd.DataFrame:
    methods = [m for m in KAPPA_METHODS if m[0] in ("sgd", "adam", "kfac")]
    methods.append(("batchnorm", "batchnorm", 0.5, True))
    points = [dict(basis=b, kappa_x=k) for b in ("rotated", "axis_aligned") for k in (1.0, 100.0)]
    return _linrep_rows(
        methods, points, lambda m, p, s: dict(iterations_to_eps=10.0 + s + p["kappa_x"])
    )


def second_order_table() -> pd.DataFrame:
    methods = [
        ("kfac", "kfac", 1.0, True),
        ("kfac_one", "kfac", 1.0, False),
        ("gauss_newton", "gauss_newton", 1.0, False),
        ("newton", "newton", 1.0, False),
    ]
    points = [dict(kappa_x=k, damping=mu) for k in (1.0, 100.0) for mu in (1e-3, 1e-1)]
    table = _linrep_rows(
        methods,
        points,
        lambda m, p, s: dict(iterations_to_eps=1.0 if m.startswith("kfac") else 7.0 + s),
    )
    return table.assign(budget=100)


def transfer_table() -> pd.DataFrame:
    methods = [m for m in KAPPA_METHODS if m[0] in ("sgd", "amd", "dfw", "kfac", "adam")]
    points = [dict(n_transfer=n) for n in (2, 4, 12)]
    rng = np.random.default_rng(RNG_SEED)
    return _linrep_rows(methods, points, lambda m, p, s: dict(transfer_risk=rng.uniform(0.1, 1)))


def floor_table() -> pd.DataFrame:
    methods = [("kfac", "kfac", 0.5, False), ("dfw", "dfw", 0.5, False)]
    points = [dict(n_effective_minus_d=n) for n in (10, 30, 70)]
    return _linrep_rows(
        methods,
        points,
        lambda m, p, s: dict(stationary_distance=0.4 / np.sqrt(p["n_effective_minus_d"])),
    )


def trajectories_table() -> pd.DataFrame:
    """linrep-trajectories' 13 labels, 40 logged iterations each."""
    methods = [
        ("sgd", "sgd", 1.0, True),
        ("amd", "amd", 2.0, True),
        ("dfw", "dfw", 1.0, True),
        ("kfac", "kfac", 1.0, False),
        ("kfac_half", "kfac", 0.5, False),
        ("adam", "adam", 0.125, True),
        ("adam_ls", "adam", 0.125, True),
        ("batchnorm", "batchnorm", 0.5, True),
        ("gauss_newton", "gauss_newton", 1.0, False),
        ("KFAC", "library_kfac", 1.0, False),
        ("Shampoo", "shampoo", 0.0625, False),
        ("SOAP", "soap", 0.0625, False),
        ("Muon", "muon", 0.0625, False),
    ]
    points = [dict(iteration=i) for i in range(0, 160, 4)]

    def curves(label, point, seed):
        decay = 0.9 + 0.01 * (sum(map(ord, label)) % 9)
        value = decay ** point["iteration"] + 1e-5 * (1 + seed)
        return dict(train_loss=value, distance=min(1.0, value), transfer_risk=value)

    return _linrep_rows(methods, points, curves)


def layerwise_table() -> pd.DataFrame:
    """linrep-layerwise's labels: the paper's sgd and kfac and the library optimizers."""
    methods = [
        ("sgd", "sgd", 0.5, False),
        ("kfac", "kfac", 1.0, False),
        ("KFAC", "library_kfac", 1.0, False),
        ("EKFAC", "library_ekfac", 0.0625, False),
        ("Shampoo", "shampoo", 0.125, False),
        ("Shampoo_exact", "shampoo", 0.03125, False),
        ("SOAP", "soap", 0.0078125, False),
        ("SOAP_exact", "soap", 0.0078125, False),
        ("Muon", "muon", 0.015625, False),
        ("Muon_exact", "muon", 0.015625, False),
    ]

    def iterations(label, point, seed):
        base = 3 + sum(map(ord, label)) % 40
        slope = 0.0 if label in ("kfac", "KFAC", "EKFAC") else 0.5
        count = base * (point["kappa_x"] * point["kappa_f"] ** 2) ** slope + seed
        return dict(iterations_to_eps=float(min(count, 300)))

    points = [dict(kappa_x=k, kappa_f=1.0) for k in (1.0, 100.0)]
    points += [dict(kappa_x=1.0, kappa_f=10.0)]
    return _linrep_rows(methods, points, iterations, budget=300, eps=3e-2)


def deep_linrep_table() -> pd.DataFrame:
    """deep-linrep-kappa's labels at depths 2 and 4, both sweeps."""
    methods = [
        ("sgd", "sgd", 0.5, True),
        ("adam", "adam", 0.0625, True),
        ("kfac", "kfac", 1.0, True),
        ("kfac_quarter", "kfac", 0.25, False),
        ("kfac_eighth", "kfac", 0.125, False),
        ("library_kfac_quarter", "library_kfac", 0.25, False),
    ]

    def iterations(label, point, seed):
        fixed = {"kfac": 2, "kfac_quarter": 25, "kfac_eighth": 52, "library_kfac_quarter": 26}
        grows = {"sgd": 40, "adam": 90}
        count = fixed.get(label) or grows[label] * point["kappa_x"] * point["kappa_f"] ** 2
        return dict(iterations_to_eps=float(min(count + seed, 3000)))

    points = [dict(depth=L, kappa_x=k, kappa_f=1.0) for L in (2, 4) for k in (1.0, 10.0, 100.0)]
    points += [dict(depth=L, kappa_x=1.0, kappa_f=3.0) for L in (2, 4)]
    return _linrep_rows(methods, points, iterations, budget=3000)


def _single_index_rows(labels, points, value, seeds=(0, 1, 2)) -> pd.DataFrame:
    rows = []
    for point in points:
        for label, algorithm in labels:
            for seed in seeds:
                base = dict(seed=seed, method=label, algorithm=algorithm, link="tanh", damping=1e-3)
                rows.append({**base, **point, **value(label, algorithm, point, seed)})
    return pd.DataFrame(rows)


def _alignment_values(label, algorithm, point, seed) -> dict[str, float]:
    ratio, kappa = point["n_over_d"], point.get("kappa", 100.0)
    level = {"kfac": 0.9, "oracle": 1.0, "adam": 0.5, "rf": 0.3}.get(algorithm, 0.6)
    align = level * ratio / (1 + ratio) + 0.01 * seed
    return dict(
        spike_align_beta=align,
        spike_align_sigma_beta=align if kappa == 1 else min(1.0, align + 0.2),
        theory_align_beta=align - 0.01,
        theory_align_sigma_beta=min(1.0, align + 0.19) if kappa != 1 else align - 0.01,
        theory_cap=1.0 if kappa == 1 else 0.64,
        excess_risk=1e-9 if algorithm == "oracle" else 0.1 / (1 + level * ratio),
    )


def alignment_table() -> pd.DataFrame:
    points = [dict(kappa=k, n_over_d=r) for k in (1.0, 100.0) for r in (0.5, 2.0, 8.0)]
    return _single_index_rows([("sgd", "sgd"), ("kfac", "kfac")], points, _alignment_values)


def risk_table() -> pd.DataFrame:
    labels = [(m, m) for m in ("rf", "sgd", "kfac", "adam", "batchnorm", "oracle")]
    points = [dict(kappa=100.0, n_over_d=r) for r in (2.0, 8.0)]
    return _single_index_rows(labels, points, _alignment_values)


def damping_table() -> pd.DataFrame:
    rows = []
    for mu in (1e-4, 1e-2, 1.0):
        points = [dict(kappa=100.0, n_over_d=r, damping=mu) for r in (0.5, 1.0)]
        rows.append(_single_index_rows([(f"kfac_{mu:g}", "kfac")], points, _alignment_values))
    sgd = [dict(kappa=100.0, n_over_d=r) for r in (0.5, 1.0)]
    rows.append(_single_index_rows([("sgd", "sgd")], sgd, _alignment_values))
    return pd.concat(rows, ignore_index=True)


#: single-index-layerwise's labels: (label, algorithm, row alignment with β⋆, with Σβ⋆) at the
#: largest n/d; every shampoo label's spike is sgd's.
LAYERWISE_STEP_METHODS = (
    ("sgd", "sgd", 0.6, 0.95),
    ("kfac", "kfac", 0.9, 0.6),
    ("shampoo_1e-4", "shampoo", 0.2, 0.25),
    ("shampoo_1e-2", "shampoo", 0.4, 0.6),
    ("shampoo_1", "shampoo", 0.58, 0.93),
    ("muon", "muon", 0.125, 0.13),
    ("muon_ns", "muon", 0.14, 0.15),
)


def layerwise_step_table() -> pd.DataFrame:
    d, rows = 64, []
    for kappa, ratio, seed in itertools.product((1.0, 100.0), (0.5, 2.0, 8.0), (0, 1, 2)):
        for label, algorithm, beta, sigma_beta in LAYERWISE_STEP_METHODS:
            grow = ratio / (1 + ratio)
            exact_muon = label == "muon"
            sgd_spike = 0.5 * grow + 0.01 * seed
            spike = {"kfac": 0.95 * grow, "muon": np.nan}.get(algorithm, sgd_spike)
            rows.append(
                dict(
                    seed=seed,
                    method=label,
                    algorithm=algorithm,
                    kappa=kappa,
                    n_over_d=ratio,
                    d=d,
                    link="tanh",
                    row_align_beta=beta * grow + 0.01 * seed,
                    row_align_sigma_beta=sigma_beta * grow + 0.01 * seed,
                    theory_row_align_beta=d**-0.5 if exact_muon else np.nan,
                    theory_row_align_sigma_beta=d**-0.5 if exact_muon else np.nan,
                    spike_align_beta=spike,
                    theory_align_beta=(0.95 if algorithm == "kfac" else 0.5) * grow
                    if algorithm != "muon"
                    else np.nan,
                )
            )
    return pd.DataFrame(rows)


def many_steps_table() -> pd.DataFrame:
    """single-index-many-steps' labels over recorded steps 1, 10, ..., 40."""
    finals = {"sgd": 0.55, "kfac": 0.9, "adam": 0.7, "shampoo": 0.6, "soap": 0.3, "muon": 0.2}
    rows = []
    for (label, final), kappa, step, seed in itertools.product(
        finals.items(), (10.0, 100.0), (1, 10, 20, 30, 40), (0, 1)
    ):
        value = 0.5 + (final - 0.5) * step / 40 + 0.01 * seed
        rows.append(
            dict(
                seed=seed,
                method=label,
                algorithm=label,
                step=step,
                d=32,
                kappa=kappa,
                link="tanh",
                spike_align_beta=value,
                spike_align_sigma_beta=min(1.0, value + 0.2),
            )
        )
    return pd.DataFrame(rows)


def training_table() -> pd.DataFrame:
    methods = [
        ("sgd", "sgd", "baseline", "sgd"),
        ("adamw", "adamw", "baseline", "adamw"),
        ("kfac", "kfac", "ours", "kfac"),
        ("muon", "muon", "ours", "muon"),
        ("torch_muon", "torch_muon", "peer", "muon"),
    ]
    rows = []
    for label, algorithm, family, kind in methods:
        for seed in (0, 1):
            for step in range(0, 45, 5):
                rows.append(
                    dict(
                        step=step,
                        val_loss=2.0 * 0.9 ** (step * (1 + len(label) / 10)) + 0.01 * seed,
                        wall_seconds=0.01 * step,
                        seed=seed,
                        diverged=False,
                        phase="report",
                        method=label,
                        algorithm=algorithm,
                        family=family,
                        method_kind=kind,
                        workload="digits",
                        available=True,
                    )
                )
    return pd.DataFrame(rows)


def mlp_table() -> pd.DataFrame:
    rows = [
        dict(method=m, seed=s, step=t, train_loss=0.5 / (1 + t * (i + 1)), test_loss=0.6 / (1 + t))
        for i, m in enumerate(("sgd", "adamw", "shampoo", "soap", "muon", "kfac"))
        for s in (0, 1)
        for t in range(0, 70, 10)
    ]
    return pd.DataFrame(rows)


FIGURES = {
    "linrep-trajectories": (linrep_figures.trajectories, trajectories_table),
    "linrep-kappa": (linrep_figures.kappa, kappa_table),
    "linrep-basis": (linrep_figures.basis, basis_table),
    "linrep-second-order": (linrep_figures.second_order, second_order_table),
    "linrep-transfer": (linrep_figures.transfer, transfer_table),
    "linrep-floor": (linrep_figures.floor, floor_table),
    "linrep-layerwise": (linrep_figures.layerwise, layerwise_table),
    "deep-linrep-kappa": (deep_linrep_figures.kappa, deep_linrep_table),
    "deep-linrep-kappa-f": (deep_linrep_figures.kappa_f, deep_linrep_table),
    "single-index-alignment": (single_index_figures.alignment_figure, alignment_table),
    "single-index-sgd-bias": (single_index_figures.sgd_bias_figure, alignment_table),
    "single-index-risk": (single_index_figures.risk_figure, risk_table),
    "single-index-features": (single_index_figures.feature_alignment_figure, risk_table),
    "single-index-damping": (single_index_figures.damping_figure, damping_table),
    "single-index-layerwise-row": (single_index_figures.row_alignment_figure, layerwise_step_table),
    "single-index-layerwise-sigma": (single_index_figures.sigma_beta_figure, layerwise_step_table),
    "single-index-layerwise-spike": (single_index_figures.spike_figure, layerwise_step_table),
    "single-index-many-steps": (many_steps_figures.over_steps_figure, many_steps_table),
    "training-curves": (training_figures.curves, training_table),
    "mlp-losses": (mlp_figures.losses, mlp_table),
}


# --- what a readable figure is ------------------------------------------------------------------


def _legends(fig: Figure):
    return [ax.get_legend() for ax in fig.axes if ax.get_legend() is not None] + fig.legends


def _inside(artist, ax) -> bool:
    """Whether ``artist`` has a finite data point within ``ax``'s current limits."""
    if isinstance(artist, Line2D):
        points = np.asarray(artist.get_xydata(), dtype=float)
    elif isinstance(artist, Collection):
        paths = artist.get_paths()
        if not paths:
            return False
        points = np.concatenate([path.vertices for path in paths])
    else:
        return False
    (x0, x1), (y0, y1) = sorted(ax.get_xlim()), sorted(ax.get_ylim())
    finite = points[np.isfinite(points).all(axis=1)]
    inside = (
        (finite[:, 0] >= x0) & (finite[:, 0] <= x1) & (finite[:, 1] >= y0) & (finite[:, 1] <= y1)
    )
    return bool(inside.any())


def _dashes(line: Line2D) -> str:
    """The dash pattern (offset, on-off sequence) that the eye tells apart; matplotlib has no
    public getter for it (``get_linestyle`` reports every custom pattern as "--")."""
    return repr(line._dash_pattern)


def _method_lines(ax) -> list[Line2D]:
    return [
        line
        for line in ax.get_lines()
        if line.get_gid() != plots.THEORY_GID and not line.get_label().startswith("_")
    ]


@pytest.fixture(scope="module", params=sorted(FIGURES))
def drawn(request):
    function, make_table = FIGURES[request.param]
    table = make_table()
    fig = function(table)
    fig.canvas.draw()
    yield request.param, table, fig
    plots.plt.close(fig)


def test_legend_texts_are_display_names_at_8pt_or_more(drawn):
    name, table, fig = drawn
    raw = {str(label) for label in table["method"].unique()} - {
        plots.display_name(label) for label in table["method"].unique()
    }
    legends = _legends(fig)
    assert legends, f"{name}: no legend"
    for legend in legends:
        for text in legend.get_texts():
            words = text.get_text()
            assert "_" not in words, f"{name}: raw identifier in legend: {words!r}"
            assert words not in raw, f"{name}: raw method label in legend: {words!r}"
            assert text.get_fontsize() >= 8, f"{name}: {words!r} at {text.get_fontsize()} pt"


def test_legends_lie_outside_every_axes(drawn):
    name, _, fig = drawn
    renderer = fig.canvas.get_renderer()
    for legend in _legends(fig):
        box = legend.get_window_extent(renderer)
        for ax in fig.axes:
            assert not box.overlaps(ax.get_window_extent(renderer)), (
                f"{name}: a legend overlaps the data area of {ax.get_title()!r}"
            )


def test_every_legend_entry_is_drawn_inside_its_axes(drawn):
    name, _, fig = drawn
    for legend in _legends(fig):
        for text in legend.get_texts():
            label = text.get_text()
            artists = [
                (artist, ax)
                for ax in fig.axes
                for artist in [*ax.get_lines(), *ax.collections]
                if artist.get_label() == label
            ]
            assert artists, f"{name}: legend entry {label!r} names no artist"
            assert any(_inside(artist, ax) for artist, ax in artists), (
                f"{name}: legend entry {label!r} has no data inside its axes"
            )


def test_theory_lines_on_one_axes_differ_in_style(drawn):
    name, _, fig = drawn
    for ax in fig.axes:
        theory = [line for line in ax.get_lines() if line.get_gid() == plots.THEORY_GID]
        styles = [(_dashes(line), line.get_color()) for line in theory]
        assert len(set(map(repr, styles))) == len(styles), f"{name}: theory lines alike"


def test_no_two_method_series_on_one_axes_look_alike(drawn):
    name, _, fig = drawn
    for ax in fig.axes:
        looks = {}
        for line in _method_lines(ax):
            look = (line.get_color(), line.get_marker(), _dashes(line))
            other = looks.setdefault(look, line.get_label())
            assert other == line.get_label(), (
                f"{name}: {other!r} and {line.get_label()!r} drawn alike on {ax.get_title()!r}"
            )


def test_trajectories_split_into_readable_panels():
    fig = linrep_figures.trajectories(trajectories_table())
    fig.canvas.draw()
    lines_per_axes = [len(_method_lines(ax)) for ax in fig.axes]
    assert len(fig.axes) == 6 and max(lines_per_axes) <= 9, lines_per_axes
    width, height = fig.get_size_inches() / np.array([3, 2])
    assert width >= 3.5 and height >= 2.5, (width, height)
    plots.plt.close(fig)


def test_budget_line_is_labelled():
    fig = linrep_figures.kappa(kappa_table())
    texts = [text.get_text() for ax in fig.axes for text in ax.texts]
    assert "budget: 8000 iterations" in texts, texts
    plots.plt.close(fig)


def test_oracle_below_the_axis_is_written_not_listed():
    fig = single_index_figures.risk_figure(risk_table())
    fig.canvas.draw()
    (ax,) = fig.axes
    labels = [text.get_text() for text in ax.get_legend().get_texts()]
    assert plots.display_name("oracle") not in labels
    assert any("oracle" in text.get_text() and "1.0e-09" in text.get_text() for text in ax.texts)
    plots.plt.close(fig)


# --- names and styles of every configured label ----------------------------------------------


def _configs() -> list[tuple[str, dict]]:
    return [
        (path.stem, yaml.safe_load(path.read_text())) for path in sorted(CONFIGS.glob("*.yaml"))
    ]


def _grid_strings(grid) -> set[str]:
    blocks = grid if isinstance(grid, list) else [grid or {}]
    values = set()
    for block in blocks:
        for value in block.values():
            for item in value if isinstance(value, list) else [value]:
                if isinstance(item, str):
                    values.add(item)
    return values


@pytest.mark.parametrize("name, config", _configs(), ids=lambda value: str(value)[:30])
def test_every_configured_label_has_a_readable_name_and_its_own_look(name, config):
    labels = list(config.get("methods") or {})
    for label in labels + sorted(_grid_strings(config.get("grid"))):
        shown = plots.display_name(label)
        assert shown and "_" not in shown, f"{name}: {label!r} shown as {shown!r}"
    looks = {label: tuple(map(repr, plots.method_style(label).values())) for label in labels}
    for a, b in itertools.combinations(labels, 2):
        assert looks[a] != looks[b], f"{name}: {a!r} and {b!r} drawn alike"


def test_display_names_of_known_labels():
    assert plots.display_name("kfac_eighth") == "KFAC, η = ⅛"
    assert plots.display_name("axis_aligned") == "axis-aligned Σx"
    assert plots.display_name("adam_ls") == "Adam, least-squares head"
    assert plots.display_name("Shampoo") == "Shampoo (library)"
    assert plots.display_name("kfac_1e-4") == "KFAC, λ = 1e-4"
    assert plots.display_name("some_new_label") == "some new label"


def test_a_family_shares_one_colour_and_families_differ():
    kfac = {plots.method_style(label)["color"] for label in ("kfac", "kfac_half", "KFAC", "ekfac")}
    assert kfac == {plots.FAMILY_COLORS["kfac"]}
    colours = list(plots.FAMILY_COLORS.values())
    assert len(set(colours)) == len(colours)
