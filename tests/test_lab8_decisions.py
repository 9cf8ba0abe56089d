"""Lab 8's decision rules (PSI, the validation gate, the canary rule), run from the lab's own cells.

The notebook checks these on the lab's data and with hidden cases; here the reference cells
run in a plain namespace, without TensorFlow, MLflow or a server, so that a change to a
rule shows up in seconds. Each wrong variant is a small patch of one cell, a mistake a
student might make, and must break the property its hidden test checks.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import pytest
from labtools import source_notebook
from scipy import stats

LAB = "lab8-continuous-deployment"
CELLS = {cell.get("id"): cell.source for cell in source_notebook(LAB).cells}


def namespace_with(*cell_ids: str, replace: dict[str, tuple[str, str]] | None = None) -> dict:
    """The names the given cells define, with the imports they rely on; `replace` patches a cell."""
    namespace = {"np": np, "pd": pd, "stats": stats, "time": time, "dataclass": dataclass, "field": field,
                 "contextlib": contextlib, "threading": threading, "deque": deque,
                 "quote": __import__("dlcloud.features", fromlist=["ORIGINS"])}
    for cell_id in cell_ids:
        source = CELLS[cell_id]
        if replace and cell_id in replace:
            old, new = replace[cell_id]
            assert source.count(old) == 1, f"the patch's text is not in {cell_id!r} exactly once: update the test"
            source = source.replace(old, new)
        exec(compile(source, f"{LAB}:{cell_id}", "exec"), namespace)  # noqa: S102 - the lab's own cells
    return namespace


GATE_CELLS = ("gate-evaluate", "validation-gate")
CANARY_CELLS = ("canary-router", "canary-decision")


def champion_report(**changes) -> dict:
    report = {"brier": 0.08, "auc": 0.72, "mean_probability": 0.10, "payout_rate": 0.10, "p95_ms": 2.0,
              "subgroup_brier": {"EWR": 0.09, "JFK": 0.08, "LGA": 0.07},
              "signature": {"input": "features", "input_dtype": "float32", "input_shape": [-1, 12],
                            "output": "output_0", "output_shape": [-1, 1]}}
    return {**report, **changes}


def test_psi_matches_its_definition_on_a_two_bin_feature():
    psi = namespace_with("psi-drift")["psi"]
    value = psi(np.r_[np.zeros(700), np.ones(300)], np.r_[np.zeros(300), np.ones(700)])
    assert value == pytest.approx(2 * 0.4 * np.log(0.7 / 0.3), abs=1e-3)


def test_psi_is_near_zero_for_one_distribution_and_near_one_for_a_shift_of_one_sd():
    psi = namespace_with("psi-drift")["psi"]
    rng = np.random.default_rng(1)
    reference = rng.normal(size=50_000)
    assert psi(reference, rng.normal(size=50_000)) < 0.005
    assert 0.6 < psi(reference, rng.normal(loc=1.0, size=50_000)) < 1.5


def test_psi_without_smoothing_is_infinite_on_an_empty_bin():
    wrong = namespace_with("psi-drift", replace={"psi-drift": (
        "ref_share, cur_share = np.clip(ref_share, SMOOTHING, None), np.clip(cur_share, SMOOTHING, None)\n", "pass\n")})
    with np.errstate(divide="ignore", invalid="ignore"):
        value = wrong["psi"](np.arange(1000.0), np.full(1000, 2000.0))
    assert not np.isfinite(value), "the hidden empty-bin test relies on this mistake giving a non-finite PSI"


def test_drift_levels_follow_the_usual_thresholds():
    level = namespace_with("psi-drift")["drift_level"]
    assert [level(v) for v in (0.0, 0.099, 0.1, 0.249, 0.25, 2.0)] == [
        "stable", "stable", "moderate", "moderate", "major", "major"]


def test_gate_accepts_an_equal_candidate_and_lists_every_check():
    lab = namespace_with(*GATE_CELLS)
    decision = lab["gate"](champion_report(), champion_report())
    assert decision.accept
    assert len(decision.reasons) == 8  # signature, brier, auc, calibration, three airports, latency
    assert all(reason.endswith("ok") for reason in decision.reasons)


@pytest.mark.parametrize(("problem", "changes", "check"), [
    ("slow", {"p95_ms": 80.0}, "latency"),
    ("miscalibrated", {"mean_probability": 0.14}, "calibration"),
    ("worse brier", {"brier": 0.085}, "quality (brier)"),
    ("worse ranking", {"auc": 0.70}, "quality (auc)"),
    ("worse at one airport", {"subgroup_brier": {"EWR": 0.12, "JFK": 0.08, "LGA": 0.07}}, "subgroup EWR"),
    ("renamed input", {"signature": {**champion_report()["signature"], "input": "inputs"}}, "signature"),
])
def test_gate_rejects_each_problem_and_names_the_failed_check(problem, changes, check):
    lab = namespace_with(*GATE_CELLS)
    decision = lab["gate"](champion_report(), champion_report(**changes))
    assert not decision.accept, f"a {problem} candidate must be rejected"
    failed = [reason for reason in decision.reasons if reason.endswith("FAILED")]
    assert len(failed) == 1 and failed[0].startswith(check), f"only {check!r} must fail, got {failed}"


def test_gate_without_a_latency_check_would_pass_a_slow_candidate():
    wrong = namespace_with(*GATE_CELLS, replace={"validation-gate": (
        'candidate["p95_ms"] <= limits["max_p95_ms"]', "True")})
    assert wrong["gate"](champion_report(), champion_report(p95_ms=80.0)).accept, (
        "the hidden latency test relies on this mistake accepting a slow candidate")


def test_canary_rule_waits_rolls_back_and_promotes():
    lab = namespace_with(*CANARY_CELLS)
    window, decide = lab["Window"], lab["decide"]
    stable = window(400, 0, 2.0)
    assert decide(stable, window(lab["MIN_CANARY_REQUESTS"] - 1, 10, 90.0))[0] == "wait"
    assert decide(stable, window(100, 10, 2.0))[0] == "rollback"
    assert decide(stable, window(100, 0, 60.0))[0] == "rollback"
    assert decide(stable, window(lab["PROMOTE_AFTER"], 0, 2.5))[0] == "promote"
    assert decide(window(400, 40, 2.0), window(lab["PROMOTE_AFTER"], 12, 2.0))[0] == "promote"


def test_canary_rule_without_a_minimum_sample_rolls_back_on_noise():
    wrong = namespace_with(*CANARY_CELLS, replace={"canary-decision": (
        "if canary.requests < MIN_CANARY_REQUESTS:", "if canary.requests == 0:")})
    action, _ = wrong["decide"](wrong["Window"](400, 0, 2.0), wrong["Window"](5, 5, 2.0))
    assert action == "rollback", "the hidden minimum-sample test relies on this mistake acting on five requests"


def test_canary_router_sends_its_share_and_records_outcomes():
    lab = namespace_with(*CANARY_CELLS)
    router = lab["CanaryRouter"](stable=(1, "stable-fn"), canary=(3, "canary-fn"), share=0.2)
    served = []
    for _ in range(100):
        with router.use() as (version, _):
            served.append(version)
    assert served.count(3) == 20 and router.window("canary").requests == 20
    router.rollback()
    with router.use() as (version, _):
        assert version == 1
