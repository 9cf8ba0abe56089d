"""The flight-delay insurance product, defined once: course data that every lab shares.

Lab 1 sells it, lab 2 ships it, labs 4, 5, 7 and 8 predict its payout event. Changing a
term here changes it for the whole course, which is the point: three labs with three
slightly different labels would train, serve and price three different products.

This module is plain data and arithmetic on the standard library only, so that lab 2 can
copy it into the insurance service's container image as it is.
"""

from __future__ import annotations

import math

__all__ = [
    "FLAT_PAYOUT_PROBABILITY",
    "LOADING",
    "PAYING_STATUSES",
    "PAYOUT_CENTS",
    "PURCHASE_DEADLINE_MINUTES",
    "THRESHOLD_MINUTES",
    "pays_out",
    "premium_cents",
]

# A flight that arrives at least this many minutes late pays out (the threshold itself counts).
THRESHOLD_MINUTES = 60

# What a paying claim pays, in integer cents: money is never a float in storage.
PAYOUT_CENTS = 10_000

# Outcomes that pay whatever the threshold: the flight never arrived where it should have,
# so no arrival delay was ever recorded, and these travellers suffered most.
PAYING_STATUSES = ("cancelled", "diverted")

# The premium's margin over the expected payout: costs and profit.
LOADING = 0.25

# The probability of a payout that prices a quote before a model does (lab 7 replaces it by
# the served model's prediction). About the share of 2013 flights that meet the terms.
FLAT_PAYOUT_PROBABILITY = 0.12

# No policy is sold later than this before the scheduled departure: by then the delay is
# partly known (the aircraft is late inbound, the weather is in), and the insurer would sell
# cover for a loss that has already happened.
PURCHASE_DEADLINE_MINUTES = 120


def pays_out(arr_delay: float | None, cancelled: bool, diverted: bool,
             threshold_minutes: int = THRESHOLD_MINUTES) -> bool:
    """The payout event, the label the course's models predict: True for a cancelled or
    diverted flight, else arrival delay ``>= threshold_minutes``.

    A missing delay (None or NaN) of a flight that is neither cancelled nor diverted is a
    data error, not a delay of zero: it raises ``ValueError`` rather than guess a label.
    """
    if cancelled or diverted:
        return True
    if arr_delay is None or (isinstance(arr_delay, float) and math.isnan(arr_delay)):
        raise ValueError("arr_delay is missing for a flight that was neither cancelled nor diverted")
    return arr_delay >= threshold_minutes


def premium_cents(payout_cents: int, probability: float, loading: float = LOADING) -> int:
    """The premium in whole cents: payout × probability × (1 + loading), rounded half to even.

    ``probability`` must be a finite number in [0, 1] and ``payout_cents`` a non-negative
    int; anything else raises ``ValueError``, so that a broken model can never price a
    policy at ``nan`` or a negative amount.
    """
    if isinstance(payout_cents, bool) or not isinstance(payout_cents, int) or payout_cents < 0:
        raise ValueError(f"payout_cents must be a non-negative int, got {payout_cents!r}")
    if not (isinstance(probability, (int, float)) and math.isfinite(probability) and 0 <= probability <= 1):
        raise ValueError(f"probability must be a finite number in [0, 1], got {probability!r}")
    if not (math.isfinite(loading) and loading >= 0):
        raise ValueError(f"loading must be a finite number >= 0, got {loading!r}")
    return round(payout_cents * probability * (1 + loading))
