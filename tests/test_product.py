"""Unit tests of dlcloud.product, the insurance product every lab shares."""

from __future__ import annotations

import ast
import math
from pathlib import Path

import pytest

from dlcloud import product


def test_terms_are_what_lab_1_sells():
    assert product.THRESHOLD_MINUTES == 60
    assert product.PAYOUT_CENTS == 10_000 and isinstance(product.PAYOUT_CENTS, int), "money is integer cents"
    assert set(product.PAYING_STATUSES) == {"cancelled", "diverted"}
    assert 0 < product.FLAT_PAYOUT_PROBABILITY < 1 and product.LOADING >= 0
    assert product.PURCHASE_DEADLINE_MINUTES > 0


@pytest.mark.parametrize(
    ("arr_delay", "cancelled", "diverted", "expected"),
    [(60, False, False, True), (59, False, False, False), (851, False, False, True),
     (-25, False, False, False), (None, True, False, True), (None, False, True, True),
     (float("nan"), True, False, True), (10.0, False, True, True)],
)
def test_pays_out_is_the_payout_event(arr_delay, cancelled, diverted, expected):
    assert product.pays_out(arr_delay, cancelled, diverted) is expected


def test_pays_out_takes_a_threshold_and_refuses_missing_delays():
    assert product.pays_out(11, False, False, threshold_minutes=10) is True
    for missing in (None, float("nan")):
        with pytest.raises(ValueError, match="neither cancelled nor diverted"):
            product.pays_out(missing, False, False)


def test_premium_is_payout_times_probability_times_loading_in_cents():
    assert product.premium_cents(10_000, 0.12) == 1500
    assert product.premium_cents(25_000, 0.0112) == 350
    assert product.premium_cents(10_000, 0.0, loading=0.5) == 0
    assert product.premium_cents(10_000, 1.0, loading=0) == 10_000
    assert isinstance(product.premium_cents(333, 1 / 3), int)


@pytest.mark.parametrize("probability", [math.nan, math.inf, -0.1, 1.5, "0.5", None])
def test_premium_refuses_probabilities_a_broken_model_may_give(probability):
    with pytest.raises(ValueError, match="probability"):
        product.premium_cents(10_000, probability)


@pytest.mark.parametrize("payout", [-1, 100.0, True])
def test_premium_refuses_money_that_is_not_integer_cents(payout):
    with pytest.raises(ValueError, match="payout_cents"):
        product.premium_cents(payout, 0.1)


def test_product_needs_only_the_standard_library():
    """Lab 2 copies this module into a container that has no dlcloud."""
    import sys

    tree = ast.parse(Path(product.__file__).read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {(node.module or "").split(".")[0] for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert imported - {"__future__"} <= set(sys.stdlib_module_names), imported


def test_every_public_name_is_documented_or_data():
    for name in product.__all__:
        value = getattr(product, name)
        if callable(value):
            assert value.__doc__, f"{name} needs a docstring"
