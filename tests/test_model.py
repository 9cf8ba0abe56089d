"""The shipped payout model and its point-in-time features (dlcloud.features)."""

import json

import numpy as np
import pytest

import dlcloud.features as features
from dlcloud_course import model as course_model


@pytest.fixture(scope="module")
def quotes():
    return features.quote_features()


def test_features_have_no_gaps_and_the_course_label(quotes):
    assert list(quotes.columns[-1:]) == ["pays_out"]
    assert not quotes[list(features.FEATURES)].isna().any().any()
    assert len(quotes) == 336_776 and quotes["flight_id"].is_unique
    # About 11 % of 2013's flights meet the terms (the flat price assumes 12 %).
    assert 0.10 < quotes["pays_out"].mean() < 0.13


def test_features_are_known_at_quote_time(quotes):
    """Changing what happens after the quote (the flight's own outcome, the day's later
    weather, yesterday's flights) must not change any feature of that flight."""
    from dlcloud.data import load_flights, load_table

    flights, weather = load_flights(), load_table("weather")
    target = 120_000  # a flight in May
    row = flights.iloc[target]
    day = (flights.year == row.year) & (flights.month == row.month) & (flights.day == row.day)
    previous = (flights.year == row.year) & (flights.month == row.month) & (flights.day == row.day - 1)
    changed = flights.copy()
    later = day | previous
    changed.loc[later, "arr_delay"] = 999.0
    changed.loc[later, "dep_delay"] = 999.0
    wx = weather.copy()
    after_quote = ((wx.year == row.year) & (wx.month == row.month) & (wx.day == row.day)
                   & (wx.hour > (row.sched_dep_time // 100) - 1))
    wx.loc[after_quote, ["visib", "wind_speed", "precip"]] = [0.0, 50.0, 1.0]
    again = features.quote_features(changed, wx)
    cols = list(features.FEATURES)
    np.testing.assert_array_equal(again.loc[target, cols].to_numpy(), quotes.loc[target, cols].to_numpy())


def test_split_months_are_disjoint_with_a_gap():
    months = [*features.TRAIN_MONTHS, *features.VALIDATION_MONTHS, *features.TEST_MONTHS]
    assert len(months) == len(set(months))
    assert max(features.VALIDATION_MONTHS) < min(features.TEST_MONTHS) - 1


def test_shipped_model_is_up_to_date():
    assert course_model.check(features.model_dir()) == []


def test_shipped_model_predicts_probabilities(quotes):
    import tensorflow as tf

    loaded = tf.saved_model.load(str(features.model_dir() / str(course_model.VERSION)))
    serve = loaded.signatures["serving_default"]
    test = features.split(quotes)["test"]
    x = tf.constant(test[list(features.FEATURES)].to_numpy()[:2000])
    p = next(iter(serve(features=x).values())).numpy()[:, 0]
    assert p.shape == (2000,) and np.all((p > 0) & (p < 1))
    meta = json.loads((features.model_dir() / "metadata.json").read_text())
    assert meta["features"] == list(features.FEATURES)
    # Better than the base rate on the test period (its Brier score is rate x (1 - rate)).
    rate = meta["metrics"]["test"]["payout_rate"]
    assert meta["metrics"]["test"]["brier"] < rate * (1 - rate)
    assert meta["metrics"]["test"]["auc"] > 0.65


def test_shipped_model_is_lab_5s_model():
    """`make model` trains the network of lab 5's build-model cell, with its settings."""
    lab = course_model.lab_definitions()
    assert {"build_model", "LEARNING_RATE", "EPOCHS", "BATCH_SIZE"} <= set(lab)
    n = len(features.FEATURES)
    model = lab["build_model"](np.zeros(n, "float32"), np.ones(n, "float32"))
    assert model.inputs[0].name == "features" and model.input_shape == (None, n) and model.output_shape == (None, 1)
    meta = json.loads((features.model_dir() / "metadata.json").read_text())
    assert meta["training"]["epochs"] == lab["EPOCHS"] and meta["training"]["batch_size"] == lab["BATCH_SIZE"]
