r"""Targets, time to target, the speed-up table and the claims T1–T3 (from stored rows).

Only the ``report`` rows of available methods count (tuning rows never do).

- **Target** of a workload: the median over AdamW's reported seeds of its validation loss at
  the last step (the budget).
- **Steps to target** of a method: the first evaluated step at which the median over its
  seeds of the validation loss is at most the target (the median curve, as in the figures;
  infinite if it never is — a diverged seed counts as an infinite loss). AdamW itself reaches
  it at the budget or earlier.
- **Wall-clock to target**: the median over seeds of the training time (``wall_seconds``,
  evaluation excluded) at that step.
- Ratios are a method's steps (or seconds) over AdamW's: below 1 is faster than AdamW.

Claims (each per workload; the README combines them over the workloads):

- T1: some layer-wise optimizer of ours reaches AdamW's target in fewer steps than AdamW
  (the evidence also says whether the best ratio is at most :data:`STEP_RATIO_GOAL`);
- T2: some layer-wise optimizer of ours reaches it in less wall-clock (goal
  :data:`WALL_RATIO_GOAL`, decided on at least one workload);
- T3: each of ours with a peer of the same method ends (median final validation loss at the
  budget) no worse than that peer, within :data:`PEER_TOLERANCE` relative.
"""

from __future__ import annotations

import math

import numpy as np
import pandas as pd

from layerwise.experiments.registry import Claim, Verdict

STEP_RATIO_GOAL = 0.7
WALL_RATIO_GOAL = 0.8
#: T3's tolerance: ours' median final validation loss may exceed the peer's by this fraction.
PEER_TOLERANCE = 0.02
REFERENCE = "adamw"


def reported(table: pd.DataFrame) -> pd.DataFrame:
    rows = table[table["available"].fillna(False).astype(bool)]
    return rows[rows["phase"] == "report"]


def unavailable(table: pd.DataFrame) -> dict[str, str]:
    rows = table[~table["available"].fillna(False).astype(bool)]
    return {str(r.method): str(r.note) for r in rows.itertuples()}


def final_losses(rows: pd.DataFrame) -> pd.Series:
    """Validation loss at the last step, one per seed."""
    last = rows[rows["step"] == rows["step"].max()]
    return last.set_index("seed")["val_loss"]


def target(table: pd.DataFrame) -> float:
    rows = reported(table)
    adamw = rows[rows["algorithm"] == REFERENCE]
    if adamw.empty:
        raise ValueError("no AdamW rows: the target is AdamW's median final validation loss")
    # One label, not a pool of several AdamW labels: the first by name, as in summary().
    label = sorted(adamw["method"].unique())[0]
    return float(final_losses(adamw[adamw["method"] == label]).median())


def time_to_target(rows: pd.DataFrame, goal: float) -> tuple[float, float]:
    """(steps, seconds) for one method's rows to reach ``goal`` on its median curve."""
    median = rows.groupby("step")["val_loss"].median().sort_index()
    hit = median[median <= goal]
    if hit.empty:
        return math.inf, math.inf
    step = int(hit.index[0])
    return float(step), float(rows[rows["step"] == step]["wall_seconds"].median())


def summary(table: pd.DataFrame) -> pd.DataFrame:
    """One row per method: steps and wall-clock to target and their ratios to AdamW's, final
    validation loss (median and interquartile range over seeds), final accuracy, step time,
    optimizer-state memory, the chosen learning rate and diverged seeds."""
    rows = reported(table)
    goal = target(table)
    out = []
    for method, group in rows.groupby("method", sort=False):
        steps, seconds = time_to_target(group, goal)
        finals = final_losses(group)
        last = group[group["step"] == group["step"].max()]
        out.append(
            dict(
                method=str(method),
                family=str(group["family"].iloc[0]),
                method_kind=str(group["method_kind"].iloc[0]),
                lr=float(group["chosen_lr"].iloc[0]),
                steps_to_target=steps,
                seconds_to_target=seconds,
                final_val_loss=float(finals.median()),
                final_val_loss_q25=float(finals.quantile(0.25)),
                final_val_loss_q75=float(finals.quantile(0.75)),
                final_val_accuracy=float(last["val_accuracy"].median()),
                step_ms=1000 * float(group["step_seconds"].median()),
                state_mb=float(group["state_bytes"].median()) / 2**20,
                diverged_seeds=int(group.groupby("seed")["diverged"].any().sum()),
                seeds=int(group["seed"].nunique()),
            )
        )
    order = {"baseline": 0, "ours": 1, "peer": 2}
    frame = pd.DataFrame(out)
    frame = frame.sort_values(
        ["family", "method_kind", "method"], key=lambda c: c.map(order) if c.name == "family" else c
    ).reset_index(drop=True)
    reference = frame[
        frame["method"] == frame.loc[frame["method_kind"] == REFERENCE, "method"].iloc[0]
    ]
    frame["step_ratio"] = frame["steps_to_target"] / float(reference["steps_to_target"].iloc[0])
    frame["wall_ratio"] = frame["seconds_to_target"] / float(reference["seconds_to_target"].iloc[0])
    frame.attrs["target"] = goal
    return frame


def speedup_table(table: pd.DataFrame) -> pd.DataFrame:
    """The report's table: per method, time to AdamW's target and the final numbers."""
    frame = summary(table)

    def number(value: float, digits: int = 3) -> str:
        return "never" if not math.isfinite(value) else f"{value:.{digits}g}"

    return pd.DataFrame(
        {
            "method": frame["method"],
            "lr": frame["lr"].map(lambda v: f"{v:g}"),
            "steps to target": frame["steps_to_target"].map(lambda v: number(v, 4)),
            "× AdamW steps": frame["step_ratio"].map(number),
            "seconds to target": frame["seconds_to_target"].map(number),
            "× AdamW wall": frame["wall_ratio"].map(number),
            "final val loss [IQR]": [
                f"{m:.4g} [{a:.4g}, {b:.4g}]"
                for m, a, b in zip(
                    frame["final_val_loss"],
                    frame["final_val_loss_q25"],
                    frame["final_val_loss_q75"],
                    strict=True,
                )
            ],
            "final val acc": frame["final_val_accuracy"].map(lambda v: f"{v:.3f}"),
            "ms / step": frame["step_ms"].map(lambda v: f"{v:.2f}"),
            "state MiB": frame["state_mb"].map(lambda v: f"{v:.2f}"),
            "diverged": [
                f"{d}/{n}" for d, n in zip(frame["diverged_seeds"], frame["seeds"], strict=True)
            ],
        }
    )


def _ratios(frame: pd.DataFrame, column: str) -> dict[str, float]:
    ours = frame[frame["family"] == "ours"]
    return {str(m): float(v) for m, v in zip(ours["method"], ours[column], strict=True)}


def _decide_speed(table: pd.DataFrame, column: str, goal: float, what: str) -> Verdict:
    frame = summary(table)
    ratios = _ratios(frame, column)
    if not ratios:
        raise ValueError("none of our optimizers has reported rows")
    best = min(ratios, key=lambda m: ratios[m])
    listed = ", ".join(f"{m} {v:.3g}" for m, v in ratios.items())
    evidence = {
        "target_val_loss": frame.attrs["target"],
        f"{column}_vs_adamw": ratios,
        "best": best,
        "goal": goal,
        "meets_goal": bool(ratios[best] <= goal),
        "unavailable": unavailable(table),
    }
    return Verdict(
        holds=bool(ratios[best] < 1),
        evidence=evidence,
        summary=f"target (AdamW median final val loss) {frame.attrs['target']:.4g}; {what} "
        f"ratio to AdamW: {listed}; best {best} {ratios[best]:.3g} "
        f"({'meets' if ratios[best] <= goal else 'misses'} the {goal:g}x goal)",
    )


def decide_fewer_steps(table: pd.DataFrame) -> Verdict:
    return _decide_speed(table, "step_ratio", STEP_RATIO_GOAL, "steps-to-target")


def decide_less_wall_clock(table: pd.DataFrame) -> Verdict:
    return _decide_speed(table, "wall_ratio", WALL_RATIO_GOAL, "wall-clock-to-target")


def decide_peer_match(table: pd.DataFrame) -> Verdict:
    frame = summary(table)
    ours = frame[frame["family"] == "ours"].set_index("method_kind")
    pairs = {}
    for peer in frame[frame["family"] == "peer"].itertuples():
        if peer.method_kind in ours.index:
            mine = float(ours.loc[peer.method_kind, "final_val_loss"])
            key = f"{ours.loc[peer.method_kind, 'method']} vs {peer.method}"
            pairs[key] = {
                "ours": mine,
                "peer": float(peer.final_val_loss),
                "holds": bool(mine <= peer.final_val_loss * (1 + PEER_TOLERANCE))
                or bool(np.isinf(peer.final_val_loss)),
            }
    missing = unavailable(table)
    if not pairs:
        return Verdict(
            holds=None,
            evidence={"unavailable": missing},
            summary="undecided: no peer optimizer ran" + (f" ({missing})" if missing else ""),
        )
    listed = "; ".join(f"{k}: {v['ours']:.4g} vs {v['peer']:.4g}" for k, v in pairs.items())
    return Verdict(
        holds=all(v["holds"] for v in pairs.values()),
        evidence={"pairs": pairs, "tolerance": PEER_TOLERANCE, "unavailable": missing},
        summary=f"median final val loss, ours vs peer: {listed} (tolerance {PEER_TOLERANCE:.0%})",
    )


#: How the target and the time to reach it are found (part of T1's and T2's rules).
_TARGET_WORDS = (
    "target = median over AdamW's reported seeds of its validation loss at the last step; a "
    "method reaches it at the first evaluated step where the median over its seeds of the "
    "validation loss is at most the target (a diverged seed counts as an infinite loss)"
)

T1 = Claim(
    id="T1",
    statement="Some layer-wise optimizer of ours reaches AdamW's target (its median final "
    "validation loss) in fewer steps than AdamW on this workload "
    f"(goal: at most {STEP_RATIO_GOAL}x AdamW's steps).",
    decide=decide_fewer_steps,
    rule=f"Holds when the best of our optimizers reaches the target in fewer steps than AdamW "
    f"(steps ratio to AdamW below 1); whether the best ratio meets the {STEP_RATIO_GOAL}x goal "
    f"is reported, not decided on; {_TARGET_WORDS}.",
    figure="curves",
)
T2 = Claim(
    id="T2",
    statement="Some layer-wise optimizer of ours reaches AdamW's target in less wall-clock than "
    f"AdamW on this workload (goal: at most {WALL_RATIO_GOAL}x on at least one workload).",
    decide=decide_less_wall_clock,
    rule=f"Holds when the best of our optimizers reaches the target in less training "
    f"wall-clock than AdamW (median over seeds of the training seconds at the step it is "
    f"reached; ratio to AdamW below 1); whether it meets the {WALL_RATIO_GOAL}x goal is "
    f"reported, not decided on; {_TARGET_WORDS}.",
    figure="curves",
)
T3 = Claim(
    id="T3",
    statement="Each of our optimizers ends (median final validation loss at the step budget) "
    f"no worse than the peer library's optimizer of the same method (within "
    f"{PEER_TOLERANCE:.0%}).",
    decide=decide_peer_match,
    rule=f"Holds when, for each of our optimizers with a peer library optimizer of the same "
    f"method, our median over seeds of the validation loss at the last step is at most the "
    f"peer's × (1 + {PEER_TOLERANCE:g}) (or the peer diverged); undecided when no peer ran.",
    figure="curves",
)
