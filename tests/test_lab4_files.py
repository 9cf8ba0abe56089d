"""Lab 4's shipped files: a dated, sourced price table and a model-card schema that does its job.

Quick checks (no notebook runs): the price table says where and when each price was read
and whether it could be checked; the schema is a valid JSON Schema in the Model Card
Toolkit's form that accepts a minimal card and refuses misspelt fields and bad dates; the
written answers are graded by hand, with a rubric in the instructor's version only.
"""

from __future__ import annotations

import datetime
import json
import tomllib

import jsonschema
import pytest
from labtools import LABS, nbgrader_cells, source_notebook, source_of

from dlcloud_course.labs import find

LAB = "lab4-ml-in-the-cloud"
FOLDER = find(LAB).folder
PRICES = tomllib.loads((FOLDER / "automl-prices.toml").read_text(encoding="utf-8"))
SCHEMA = json.loads((FOLDER / "model_card.schema.json").read_text(encoding="utf-8"))
LAW_ANSWERS = {"ai-act-risk-class", "article-22-automated-quotes", "us-transfer-of-training-data"}


def _validator():
    return jsonschema.Draft7Validator(SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)


def _minimal_card() -> dict:
    return {
        "schema_version": "0.0.2",
        "model_details": {"name": "pays-out", "version": {"name": "1", "date": "2026-12-02"}},
        "considerations": {"use_cases": [{"description": "Pricing flight-delay insurance."}],
                           "limitations": [{"description": "2013, New York only."}]},
        "quantitative_analysis": {"performance_metrics": [{"type": "AUC", "value": 0.72, "slice": "test"}]},
    }


@pytest.mark.parametrize("name", sorted(PRICES["offers"]))
def test_every_price_is_dated_sourced_and_flagged(name):
    offer = PRICES["offers"][name]
    assert offer["usd_per_hour"] >= 0 and offer["minimum_billed_hours"] >= 0, f"{name}: a price is never negative"
    assert offer["source"].startswith("https://"), f"{name}: a price names the page it was read on"
    datetime.date.fromisoformat(offer["read_on"])
    assert isinstance(offer["verified"], bool), f"{name}: say whether the price could be checked"
    if not offer["verified"]:
        assert "not verified here" in offer["note"], (
            f"{name}: an unverified price must say so in its note, in those words")


def test_the_schema_is_a_valid_draft7_schema_that_accepts_a_minimal_card():
    jsonschema.Draft7Validator.check_schema(SCHEMA)
    errors = list(_validator().iter_errors(_minimal_card()))
    assert not errors, f"a minimal model card must validate: {[e.message for e in errors]}"


@pytest.mark.parametrize("path, value", [
    (("considerations", "use_case"), [{"description": "misspelt field"}]),
    (("model_details", "version", "date"), "2 December 2026"),
    (("quantitative_analysis", "performance_metrics"), [{"type": "AUC", "value": "0.72"}]),
    (("considerations", "limitations"), [{}]),
])
def test_the_schema_refuses_what_a_careless_card_gets_wrong(path, value):
    card = _minimal_card()
    target = card
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    assert list(_validator().iter_errors(card)), f"the schema must refuse {path} = {value!r}"


def test_the_law_answers_are_graded_by_hand_with_a_rubric_for_the_instructor_only():
    cells = {c["metadata"]["nbgrader"]["grade_id"]: c for c in nbgrader_cells(source_notebook(LAB))}
    for grade_id in LAW_ANSWERS:
        meta = cells[grade_id]["metadata"]["nbgrader"]
        assert meta["grade"] and meta["solution"] and meta["points"] > 0, f"{grade_id}: a graded written answer"
        assert "Rubric" in source_of(cells[grade_id]), f"{grade_id}: the instructor's version carries a rubric"
    released = (LABS / LAB / f"{LAB}.ipynb").read_text(encoding="utf-8")
    assert "Rubric" not in released and "Model answer" not in released, (
        "the released lab must not show the rubric or the model answers")
