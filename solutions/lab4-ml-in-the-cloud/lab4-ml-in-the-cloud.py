# %% [markdown] given="lab-goal"
# # Lab 4: Machine learning in the cloud, by hand and measured
#
# Managed ML platforms (Vertex AI, SageMaker AI, Azure Machine Learning) sell *AutoML*:
# hand over a table and a target, get back a tuned model, an explanation and a bill.
# Chapter 4 explains what they do; in this lab you do it yourself, on the payout model of
# the course's flight-delay insurance, and measure every step, so that you can judge a
# managed run instead of trusting it. By the end you will have:
#
# 1. run a **budgeted hyperparameter search** with Optuna on the course's time split, and
#    checked that its winner beats lab 5's baseline on the test months by a stated margin;
# 2. drawn a **reliability diagram**, fitted a **calibration** on the validation month
#    only, and seen what miscalibration costs the insurer in money;
# 3. **opened the black box** with permutation importance on held-out data and partial
#    dependence with individual curves, and written what they say and do not say;
# 4. written a **model card** as data and validated it against a schema kept in this lab;
# 5. **priced** the same search on a managed service and on the lab machine from a dated
#    price table;
# 6. answered three questions of **law** for a product sold in the EU (graded by hand).
#
# Everything runs on two cores in a few minutes. Fill in every cell that says
# `YOUR CODE HERE`, then run the test cell after it: the tests say what is wrong and where.

# %% [markdown] given="setup-text"
# ## 0. Setup
#
# The data is the course's: `dlcloud.features.quote_features()` gives one row per flight
# with the twelve features known at quote time (two hours before departure) and the label
# `pays_out` of `dlcloud.product`; `split()` cuts it by time into the train months
# (January to August), the validation month (September) and the test months (November and
# December). The rule of the whole lab: **fit on train, choose and calibrate on
# validation, look at test once, to report.**
#
# Two settings in this cell are there for the machine, not for the model:
#
# - Optuna logs every trial at INFO level to stderr, and nbgrader fails a graded cell that
#   writes to stderr: its logger is set to warnings only (errors still raise).
# - scikit-learn's gradient boosting runs OpenMP threads that busy-wait for each other. On
#   a shared two-core machine (Binder, a JupyterHub) a trial that takes one second on one
#   thread has been measured taking two minutes with two threads fighting the neighbours'
#   processes. One thread per process makes each trial's time predictable, and the
#   search's results do not depend on the thread count.

# %% given="setup"
import json
import math
import time
import tomllib
from datetime import date
from pathlib import Path

import jsonschema
import matplotlib.pyplot as plt
import numpy as np
import optuna
import pandas as pd
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.inspection import PartialDependenceDisplay, permutation_importance
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import brier_score_loss, roc_auc_score
from threadpoolctl import threadpool_limits

from dlcloud.features import FEATURES, TEST_MONTHS, TRAIN_MONTHS, VALIDATION_MONTHS, model_dir, quote_features, split
from dlcloud.product import LOADING, PAYOUT_CENTS, premium_cents

optuna.logging.set_verbosity(optuna.logging.WARNING)
threadpool_limits(1)

LAB_DIR = Path.cwd()
LAB_START = time.perf_counter()
SEED = 0

PERIODS = split(quote_features())
train, validation, test = PERIODS["train"], PERIODS["validation"], PERIODS["test"]
for name, rows in PERIODS.items():
    print(f"{name:<10} {len(rows):>7} flights, payout rate {rows['pays_out'].mean():.3f}")


def columns_of(config):
    """The input columns of a configuration: every feature, or all but `month`."""
    return [f for f in FEATURES if config.get("use_month", True) or f != "month"]


# %% [markdown] given="baseline-text"
# ## 1. The baseline to beat
#
# A search is only worth its bill if its winner beats something simple. The something is
# lab 5's baseline: a logistic regression on one feature, the scheduled departure hour
# (flights later in the day inherit the day's delays), fitted on the train months. Its
# test AUC is the AUC of the hour itself.
#
# The **margin** is stated before the search runs, so that it cannot be bent to the
# result: the search's best model must beat the baseline's test AUC by at least
# `AUC_MARGIN = 0.05`. For reference the cell also prints what the course's shipped model
# (lab 5's small Keras network, `dlcloud/models/pays_out/metadata.json`) measured on the
# same test months.

# %% given="baseline"
AUC_MARGIN = 0.05

hour = ["sched_dep_hour"]
baseline = LogisticRegression().fit(train[hour], train["pays_out"])
baseline_test = baseline.predict_proba(test[hour])[:, 1]
BASELINE = {"auc": roc_auc_score(test["pays_out"], baseline_test),
            "brier": brier_score_loss(test["pays_out"], baseline_test)}
SHIPPED = json.loads((model_dir() / "metadata.json").read_text())["metrics"]["test"]
print(f"lab-5 baseline (hour only), test: AUC {BASELINE['auc']:.4f}, Brier {BASELINE['brier']:.4f}")
print(f"shipped network (lab 5),    test: AUC {SHIPPED['auc']:.4f}, Brier {SHIPPED['brier']:.4f}")
print(f"the search must reach a test AUC of at least {BASELINE['auc'] + AUC_MARGIN:.4f}")

# %% [markdown] given="search-text"
# ## 2. AutoML by hand: a budgeted search
#
# What an AutoML service does for a table is mostly this: pick a model family, search its
# hyperparameters (and a few choices about the features) for a fixed **budget**, score
# each candidate on held-out data, keep the best. We do it with **Optuna** rather than
# KerasTuner: Optuna searches any Python function (here a scikit-learn model; KerasTuner
# only Keras models), its TPE sampler is seeded and reproducible, and its study keeps
# every trial's parameters, score and duration for the plot and the bill. Managed
# services expose the same idea: Vertex AI's tuning runs on its Vizier service, SageMaker
# AI's automatic model tuning on a Bayesian search.
#
# **The family.** Gradient-boosted trees (`HistGradientBoostingClassifier`), not lab 5's
# network: boosted trees are what AutoML tabular services try first and usually keep,
# they train in about a second on two cores, and searching a family other than the one
# you had is exactly what AutoML does. The shipped network stays the reference.
#
# **The budget.** `TRIAL_BUDGET = 20` trials, each trained on the same seeded sample of
# the train months: 15,000 flights that paid out and 30,000 that did not. Sampling keeps
# a trial near a second; sampling the two classes separately keeps every trial's share of
# rare payouts high (a third instead of an eighth), which helps a small sample learn the
# rare class, and shifts every predicted probability upwards. Section 3 corrects that
# shift: remember it.
#
# **The objective** is the AUC on the validation month: the search chooses by ranking,
# the calibration of section 3 fixes the level. The test months play no part.
#
# **Your task.** Write
#
# - `suggest_config(trial)`: a dict with one entry per choice, each drawn from `trial` and
#   named as the keyword `HistGradientBoostingClassifier` takes: `learning_rate` (0.02 to
#   0.3, on a log scale), `max_iter` (50 to 200 in steps of 50), `max_leaf_nodes` (7 to
#   63, log), `min_samples_leaf` (20 to 1000, log), `l2_regularization` (0.001 to 10,
#   log), plus `use_month` (True or False: whether the model sees the calendar month,
#   which the test months, November and December, lie outside of);
# - `fit_config(config, rows)`: the model of one configuration fitted on `rows` (its
#   `columns_of(config)` and its label), with `random_state=SEED` and `early_stopping`
#   off (early stopping would carve its own validation set out of the sample at random);
# - `objective(trial)`: suggest, fit on `search_sample`, record the number of training
#   rows as the trial's user attribute `train_rows`, return the validation AUC;
# - `run_search(n_trials)`: a study that maximises the objective with
#   `optuna.samplers.TPESampler(seed=SEED)`, run for exactly `n_trials` trials (a trial
#   count, not a timeout, so that the result does not depend on the machine's speed).

# %% given="search-sample"
TRIAL_BUDGET = 20
PAYING_ROWS, NOT_PAYING_ROWS = 15_000, 30_000

search_sample = pd.concat([
    train[train["pays_out"] == 1].sample(n=PAYING_ROWS, random_state=SEED),
    train[train["pays_out"] == 0].sample(n=NOT_PAYING_ROWS, random_state=SEED),
])
print(f"search sample: {len(search_sample)} flights of the train months, "
      f"payout rate {search_sample['pays_out'].mean():.3f} (train months: {train['pays_out'].mean():.3f})")


# %% solution="budgeted-search"
def suggest_config(trial):
    ### BEGIN SOLUTION
    return {
        "use_month": trial.suggest_categorical("use_month", [True, False]),
        "learning_rate": trial.suggest_float("learning_rate", 0.02, 0.3, log=True),
        "max_iter": trial.suggest_int("max_iter", 50, 200, step=50),
        "max_leaf_nodes": trial.suggest_int("max_leaf_nodes", 7, 63, log=True),
        "min_samples_leaf": trial.suggest_int("min_samples_leaf", 20, 1000, log=True),
        "l2_regularization": trial.suggest_float("l2_regularization", 1e-3, 10, log=True),
    }
    ### END SOLUTION


def fit_config(config, rows):
    ### BEGIN SOLUTION
    hyperparameters = {key: value for key, value in config.items() if key != "use_month"}
    model = HistGradientBoostingClassifier(random_state=SEED, early_stopping=False, **hyperparameters)
    return model.fit(rows[columns_of(config)], rows["pays_out"])
    ### END SOLUTION


def objective(trial):
    ### BEGIN SOLUTION
    config = suggest_config(trial)
    model = fit_config(config, search_sample)
    trial.set_user_attr("train_rows", len(search_sample))
    scores = model.predict_proba(validation[columns_of(config)])[:, 1]
    return roc_auc_score(validation["pays_out"], scores)
    ### END SOLUTION


def run_search(n_trials):
    ### BEGIN SOLUTION
    study = optuna.create_study(study_name="lab4-payout-search", direction="maximize",
                                sampler=optuna.samplers.TPESampler(seed=SEED))
    study.optimize(objective, n_trials=n_trials)
    return study
    ### END SOLUTION


# %% given="run-search"
search_started = time.perf_counter()
study = run_search(TRIAL_BUDGET)
SEARCH_SECONDS = time.perf_counter() - search_started
print(f"{len(study.trials)} trials in {SEARCH_SECONDS:.0f} s; best validation AUC {study.best_value:.4f}")
print("best configuration:", study.best_params)

# %% [markdown] given="search-plot-text"
# The plot shows what the budget bought: each trial's validation AUC (a dot) and the best
# so far (the line). TPE starts with random trials, then samples near the good ones; a
# flat line at the end means more trials would probably have bought little.

# %% given="search-plot"
values = [t.value for t in study.trials]
fig, ax = plt.subplots(figsize=(7, 3.5))
ax.plot(range(len(values)), values, "o", label="trial")
ax.plot(range(len(values)), np.maximum.accumulate(values), "-", label="best so far")
ax.set_xlabel("trial")
ax.set_ylabel("validation AUC (September)")
ax.set_title(f"Optuna TPE, {TRIAL_BUDGET} trials, {SEARCH_SECONDS:.0f} s on this machine")
ax.legend()
plt.show()

# %% tests="search-respects-its-budget" points=2
trials = study.get_trials(deepcopy=False)
assert 0 < len(trials) <= TRIAL_BUDGET, (
    f"The search ran {len(trials)} trials; its budget is {TRIAL_BUDGET}: "
    "see run_search in section 2 (n_trials, not a timeout)")
assert all(t.state == optuna.trial.TrialState.COMPLETE for t in trials), (
    "Some trials did not complete (failed or pruned): see objective in section 2")
assert study.direction == optuna.study.StudyDirection.MAXIMIZE, (
    "The objective is the validation AUC: the study must maximize it (run_search, section 2)")
### BEGIN HIDDEN TESTS
assert len(trials) == TRIAL_BUDGET, (
    "The search must spend its whole budget of trials, no fewer: see run_search in section 2")
assert isinstance(study.sampler, optuna.samplers.TPESampler), (
    "The study must use optuna.samplers.TPESampler(seed=SEED): see run_search in section 2")
assert all(t.user_attrs.get("train_rows") == len(search_sample) for t in trials), (
    "Every trial must train on the search sample and record its size as the user attribute "
    "train_rows: see objective in section 2")
expected_choices = {"use_month", "learning_rate", "max_iter", "max_leaf_nodes", "min_samples_leaf",
                    "l2_regularization"}
assert set(study.best_params) == expected_choices, (
    "The search space must have exactly the six choices named in section 2 (suggest_config)")
assert all(0.02 <= t.params["learning_rate"] <= 0.3 and 50 <= t.params["max_iter"] <= 200
           and 7 <= t.params["max_leaf_nodes"] <= 63 for t in trials), (
    "A trial's hyperparameters lie outside the ranges of section 2: see suggest_config")
### END HIDDEN TESTS
print(f"{len(trials)} trials, all complete, within the budget of {TRIAL_BUDGET}")

# %% [markdown] given="refit-text"
# The best trial's model is refitted from its configuration (a trial's model is not kept:
# keeping twenty models would cost memory for nothing), and the test months are looked at
# for the first time.

# %% given="refit"
best_config = dict(study.best_params)
best_columns = columns_of(best_config)
best_model = fit_config(best_config, search_sample)
raw = {"validation": best_model.predict_proba(validation[best_columns])[:, 1],
       "test": best_model.predict_proba(test[best_columns])[:, 1]}
best_test_auc = roc_auc_score(test["pays_out"], raw["test"])
print(f"best model, test AUC {best_test_auc:.4f} (baseline {BASELINE['auc']:.4f}, "
      f"shipped network {SHIPPED['auc']:.4f})")

# %% tests="best-trial-beats-the-baseline-on-test" points=3
from sklearn.metrics import roc_auc_score  # noqa: F811 -- test cells stand on their own

scores = best_model.predict_proba(test[columns_of(best_config)])[:, 1]
test_auc = roc_auc_score(test["pays_out"], scores)
assert test_auc >= BASELINE["auc"] + AUC_MARGIN, (
    f"On the test months the best model's AUC is {test_auc:.4f} and the lab-5 baseline's "
    f"{BASELINE['auc']:.4f}: the search must beat it by {AUC_MARGIN}. See suggest_config, fit_config "
    "and objective in section 2")
### BEGIN HIDDEN TESTS
again = fit_config(best_config, search_sample).predict_proba(validation[columns_of(best_config)])[:, 1]
assert abs(roc_auc_score(validation["pays_out"], again) - study.best_value) < 1e-9, (
    "Refitting the best configuration does not reproduce its trial's validation AUC: fit_config must "
    "fit on the rows it is given with random_state=SEED, and objective must score the validation "
    "month (section 2)")
assert best_model.n_features_in_ == len(columns_of(best_config)), (
    "fit_config must fit on columns_of(config) only (section 2)")
### END HIDDEN TESTS
print(f"test AUC {test_auc:.4f} >= baseline {BASELINE['auc']:.4f} + {AUC_MARGIN}")


# %% [markdown] given="calibration-text"
# ## 3. Calibration: the price depends on the level, not only the ranking
#
# The premium is `payout × probability × (1 + LOADING)`: a model that ranks flights well
# but says 30 % where the truth is 10 % triples every price. A model is **calibrated** when
# among the flights it gives 10 %, about 10 % pay out. Two tools measure it:
#
# - the **Brier score**, the mean of `(probability - outcome)²`: lower is better, and it
#   punishes both bad ranking and bad level;
# - the **reliability diagram**: flights binned by predicted probability, the mean
#   prediction of each bin against the share that paid out. A calibrated model lies on the
#   diagonal.
#
# Our model cannot be calibrated: it learnt from a sample where a third of flights paid out.
# **Platt scaling** fixes that with a logistic regression on one input, the logit of the
# model's probability, `log(p / (1 - p))`: two parameters, a slope (is the model over- or
# under-confident?) and an intercept (is its level too high?). Isotonic regression, the
# other common choice, fits any increasing step function: more flexible, and with one
# month of data (about 1,900 payouts) more prone to fit that month's noise.
#
# The calibration is fitted on the **validation month only**. Fitting it on the test
# months would make the test Brier score look better and mean nothing: it would be
# reporting a price the model could not have known when it was set.
#
# **Your task.** Write `fit_calibrator(probabilities, labels)`: fit Platt scaling on these
# probabilities and outcomes and return a function that maps an array of the model's
# probabilities to calibrated ones. Use `logit` below (it clips probabilities away from 0
# and 1 first) and a `LogisticRegression`.

# %% given="logit"
def logit(probabilities):
    p = np.clip(np.asarray(probabilities, dtype=np.float64), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))


# %% solution="platt-calibration"
def fit_calibrator(probabilities, labels):
    ### BEGIN SOLUTION
    platt = LogisticRegression().fit(logit(probabilities)[:, None], np.asarray(labels))

    def calibrate(model_probabilities):
        return platt.predict_proba(logit(model_probabilities)[:, None])[:, 1]

    return calibrate
    ### END SOLUTION


# %% given="calibrate"
calibrate = fit_calibrator(raw["validation"], validation["pays_out"].to_numpy())
calibrated = {period: calibrate(scores) for period, scores in raw.items()}
for name, probabilities in (("raw", raw["test"]), ("calibrated", calibrated["test"])):
    print(f"{name:<10} test Brier {brier_score_loss(test['pays_out'], probabilities):.4f}, "
          f"mean probability {probabilities.mean():.4f} (payout rate {test['pays_out'].mean():.4f})")
print(f"baseline   test Brier {BASELINE['brier']:.4f}; shipped network {SHIPPED['brier']:.4f}")


# %% given="reliability-diagram"
def reliability(labels, probabilities, bins=10):
    """Mean prediction and observed payout rate per bin of equal width, and the bin sizes."""
    edges = np.linspace(0, 1, bins + 1)
    which = np.clip(np.digitize(probabilities, edges) - 1, 0, bins - 1)
    table = pd.DataFrame({"bin": which, "p": probabilities, "y": np.asarray(labels)})
    return table.groupby("bin").agg(predicted=("p", "mean"), observed=("y", "mean"), flights=("y", "size"))


fig, ax = plt.subplots(figsize=(5, 5))
ax.plot([0, 1], [0, 1], ":", color="grey", label="calibrated")
for name, probabilities in (("raw", raw["test"]), ("Platt, fitted on September", calibrated["test"])):
    table = reliability(test["pays_out"], probabilities)
    ax.plot(table["predicted"], table["observed"], "o-", label=name)
ax.set_xlabel("mean predicted probability")
ax.set_ylabel("observed payout rate (Nov-Dec)")
ax.set_title("Reliability on the test months")
ax.legend()
plt.show()

# %% tests="calibration-fitted-on-validation-improves-brier" points=3
from sklearn.metrics import brier_score_loss  # noqa: F811 -- test cells stand on their own

raw_brier = brier_score_loss(test["pays_out"], raw["test"])
calibrated_brier = brier_score_loss(test["pays_out"], calibrated["test"])
assert np.all((calibrated["test"] >= 0) & (calibrated["test"] <= 1)), (
    "Calibrated probabilities must lie in [0, 1]: see fit_calibrator in section 3")
assert calibrated_brier <= 0.9 * raw_brier, (
    f"Calibration must lower the test Brier score by at least 10 %: raw {raw_brier:.4f}, calibrated "
    f"{calibrated_brier:.4f}. See fit_calibrator in section 3")
### BEGIN HIDDEN TESTS
refit = fit_calibrator(raw["validation"], validation["pays_out"].to_numpy())
assert np.allclose(refit(raw["test"]), calibrated["test"]), (
    "The calibrated test probabilities are not those of a calibrator fitted on the validation month "
    "alone: fit_calibrator must fit on the probabilities and labels it is given (section 3)")
rng = np.random.default_rng(7)
truth = rng.uniform(0.01, 0.5, 20_000)
outcomes = rng.uniform(size=truth.size) < truth
overconfident = 1 / (1 + np.exp(-2.5 * logit(truth)))
synthetic = fit_calibrator(overconfident, outcomes)
assert brier_score_loss(outcomes, synthetic(overconfident)) < brier_score_loss(outcomes, overconfident), (
    "fit_calibrator does not learn from its arguments: on an overconfident model it must lower "
    "the Brier score (section 3)")
ordered = np.linspace(0.001, 0.999, 200)
assert np.all(np.diff(synthetic(ordered)) >= 0), (
    "A calibrator must keep the order of the scores: its output must not decrease (section 3)")
### END HIDDEN TESTS
print(f"test Brier {raw_brier:.4f} -> {calibrated_brier:.4f}, calibrator fitted on September")


# %% [markdown] given="premium-text"
# ## 4. What miscalibration costs in money
#
# Suppose every test-period flight had been sold one policy at the model's price. The
# insurer collects the premiums and pays `PAYOUT_CENTS` for every flight that paid out.
# The loading is meant to leave a margin of `LOADING` × the claims paid: priced at the
# true probability, premiums come to `(1 + LOADING)` × claims. A price too high leaves
# more margin on paper and, in a market with competitors, loses the customers; a price too
# low loses money on every policy.
#
# **Your task.** Write `premiums_for(probabilities)`, an `int64` array of the premiums in
# cents of `dlcloud.product.premium_cents` (integer cents, rounded as it rounds: money is
# never a float), and `underwriting_result(premiums, labels)`, a dict with the number of
# `policies`, the `premiums_cents` collected, the `claims_cents` paid and the
# `margin_cents` (premiums minus claims), all Python `int`s.

# %% solution="premiums-and-margin"
def premiums_for(probabilities):
    ### BEGIN SOLUTION
    return np.array([premium_cents(PAYOUT_CENTS, float(p)) for p in probabilities], dtype=np.int64)
    ### END SOLUTION


def underwriting_result(premiums, labels):
    ### BEGIN SOLUTION
    collected = int(np.sum(premiums))
    claims = int(np.sum(labels)) * PAYOUT_CENTS
    return {"policies": len(premiums), "premiums_cents": collected, "claims_cents": claims,
            "margin_cents": collected - claims}
    ### END SOLUTION


# %% given="money"
outcomes_test = test["pays_out"].to_numpy()
results = {name: underwriting_result(premiums_for(p), outcomes_test)
           for name, p in (("raw model", raw["test"]), ("calibrated", calibrated["test"]))}
claims = int(outcomes_test.sum()) * PAYOUT_CENTS
target_margin = round(LOADING * claims)
print(f"{'priced with':<12} {'premiums':>12} {'claims':>12} {'margin':>12} {'vs target':>12}")
for name, result in results.items():
    print(f"{name:<12} {result['premiums_cents'] / 100:>12,.0f} {result['claims_cents'] / 100:>12,.0f} "
          f"{result['margin_cents'] / 100:>12,.0f} {(result['margin_cents'] - target_margin) / 100:>+12,.0f}")
print(f"target margin (LOADING x claims): {target_margin / 100:,.0f}, over {len(outcomes_test)} policies")

# %% tests="premium-arithmetic" points=2
from dlcloud.product import PAYOUT_CENTS, premium_cents  # noqa: F811 -- test cells stand on their own

examples = premiums_for(np.array([0.0, 0.1, 0.5, 1.0]))
assert list(examples) == [0, 1250, 6250, 12500], (
    f"premiums_for([0, 0.1, 0.5, 1]) returned {list(examples)}, expected [0, 1250, 6250, 12500] "
    "(payout x probability x (1 + LOADING)): see section 4")
assert examples.dtype == np.int64, (
    f"premiums_for must return integer cents (int64), got {examples.dtype}: see section 4")
### BEGIN HIDDEN TESTS
sample = calibrated["test"][:500]
assert list(premiums_for(sample)) == [premium_cents(PAYOUT_CENTS, float(p)) for p in sample], (
    "premiums_for must round as dlcloud.product.premium_cents rounds: call it for each probability "
    "(section 4)")
small = underwriting_result(np.array([1250, 1250, 6250], dtype=np.int64), np.array([0, 1, 1]))
assert small == {"policies": 3, "premiums_cents": 8750, "claims_cents": 2 * PAYOUT_CENTS,
                 "margin_cents": 8750 - 2 * PAYOUT_CENTS}, (
    "underwriting_result is wrong on three policies, two of which paid out: see section 4")
assert all(type(v) is int for v in small.values()), (
    "underwriting_result must return Python ints, not numpy numbers or floats (section 4)")
### END HIDDEN TESTS
print("premium arithmetic OK")

# %% [markdown] given="black-box-text"
# ## 5. Opening the black box
#
# A boosted model of up to 200 trees cannot be read. Two questions can still be answered from
# the outside, and they are different questions:
#
# - **How much does the model rely on a feature?** *Permutation importance* shuffles one
#   column of held-out data, breaking its link with the label, and measures how much the
#   score drops. It must be computed on data the model did not train on: on training
#   rows it measures what the model memorised, not what generalises. Its limits: two
#   correlated features share their importance (shuffle one and the other still carries
#   the signal), and shuffling creates impossible rows (a 2 a.m. departure with a
#   day-time weather pattern).
# - **How does the prediction change with a feature?** *Partial dependence* sets the
#   feature to each value of a grid in every row and averages the predictions; the
#   *individual conditional expectation* (ICE) curves are the same per row, and show
#   whether the average hides rows that move differently. They share the impossible-rows
#   limit.
#
# SHAP, the third method chapter 4 discusses, is not used: its current releases need a
# newer Python than the course's, and the older ones a numba that the course's lock does not
# have. Partial dependence and ICE answer the question SHAP's dependence plots answer
# (direction and shape), with scikit-learn alone.
#
# **Your task.** Write `held_out_importance(model, columns, rows)`: scikit-learn's
# `permutation_importance` of `model` on `rows[columns]` against `rows["pays_out"]`, with
# `scoring="roc_auc"`, `n_repeats=IMPORTANCE_REPEATS` and `random_state=SEED` (leave
# `n_jobs` unset: one process), returned as a DataFrame with the columns `feature`,
# `importance` (the mean drop) and `std`, sorted by importance, largest first. The rows
# are 10,000 flights of the test months, drawn with the seed.

# %% given="importance-rows"
IMPORTANCE_REPEATS = 5
importance_rows = test.sample(n=10_000, random_state=SEED)


# %% solution="held-out-importance"
def held_out_importance(model, columns, rows):
    ### BEGIN SOLUTION
    result = permutation_importance(model, rows[columns], rows["pays_out"], scoring="roc_auc",
                                    n_repeats=IMPORTANCE_REPEATS, random_state=SEED)
    table = pd.DataFrame({"feature": columns, "importance": result.importances_mean,
                          "std": result.importances_std})
    return table.sort_values("importance", ascending=False, ignore_index=True)
    ### END SOLUTION


# %% given="importance-plot"
importance = held_out_importance(best_model, best_columns, importance_rows)
print(importance.to_string(index=False, float_format=lambda v: f"{v:.4f}"))
fig, ax = plt.subplots(figsize=(6, 4))
ax.barh(importance["feature"][::-1], importance["importance"][::-1], xerr=importance["std"][::-1])
ax.set_xlabel("drop in test AUC when the feature is shuffled")
ax.set_title("Permutation importance, 10,000 test flights")
plt.show()

# %% tests="importance-on-held-out-data" points=2
from sklearn.inspection import permutation_importance  # noqa: F811 -- test cells stand on their own

assert set(importance["feature"]) == set(columns_of(best_config)), (
    "held_out_importance must score every input column of the model, once: see section 5")
assert list(importance["importance"]) == sorted(importance["importance"], reverse=True), (
    "The importance table must be sorted by importance, largest first: see section 5")
### BEGIN HIDDEN TESTS
reference = permutation_importance(best_model, importance_rows[columns_of(best_config)],
                                   importance_rows["pays_out"], scoring="roc_auc",
                                   n_repeats=IMPORTANCE_REPEATS, random_state=SEED)
expected = dict(zip(columns_of(best_config), reference.importances_mean))
got = dict(zip(importance["feature"], importance["importance"]))
assert all(abs(got[f] - expected[f]) < 1e-9 for f in expected), (
    "The importances are not those of the held-out test rows with scoring roc_auc, n_repeats "
    "IMPORTANCE_REPEATS and random_state SEED: see held_out_importance in section 5")
### END HIDDEN TESTS
print("importance computed on held-out test flights")

# %% [markdown] given="dependence-text"
# Partial dependence (thick line) and ICE curves (thin lines, 200 flights) of the two
# most important features, on the same held-out rows. The vertical scale is the raw
# model's probability, inflated by the balanced sample: read the shape, not the level.

# %% given="dependence"
top_two = list(importance["feature"][:2])
fig, axes = plt.subplots(1, 2, figsize=(10, 3.5))
PartialDependenceDisplay.from_estimator(
    # float64: partial dependence writes grid values into a copy of the rows, and the grid of
    # a float32 column is computed in float64.
    best_model, importance_rows[best_columns].astype("float64"), top_two, kind="both", subsample=200,
    grid_resolution=20, random_state=SEED, ax=axes)
plt.show()

# %% [markdown] answer="interpret-the-black-box" points=3
# In four to eight sentences: which features does the model rely on most, and is that
# plausible for delays known two hours before departure? What does the partial dependence
# of the top feature say (direction, shape), and do the ICE curves agree with the
# average? Name one thing these two methods cannot tell you about this model, and one way
# their results could mislead an insurer (think of correlated features, and of the months
# the model was trained on versus the test months).
#
# ### BEGIN SOLUTION
# *Model answer.* On this seed the scheduled hour leads, then the visibility at quote time
# and the carrier's recent payout rate; precipitation, the day of the week and the
# distance follow far behind. Plausible at quote time: delays build up through the day,
# low visibility at the origin two hours before departure slows the airport's whole
# schedule, and a carrier's recent delays persist (crews, aircraft, hubs). `month` scores
# exactly zero: November and December both lie beyond August, the last train month, so
# every tree sends them down the same branch and shuffling them changes nothing; the
# model's month effect on the test is August's, extrapolated. The origin's payout rate
# scores slightly *below* zero: shuffling it helps, a sign that what the model learnt from
# it in the train months does not hold in the test months. The partial dependence of the
# hour rises through the day and flattens in the evening; most ICE curves run parallel to
# the average, a mostly additive effect. What the methods cannot tell: why the model
# relies on a feature (association, not cause), nor what it does on flights unlike the
# held-out rows. Misleading: correlated features (the origin and carrier rates, the hour
# and the weather of the day) share their importance, and shuffled rows are combinations
# that never occur.
#
# *Rubric (3 points).* 1 point: names the top features from the student's own table and
# judges their plausibility at quote time. 1 point: reads the partial dependence and the
# ICE curves correctly (direction, shape, whether individual curves agree). 1 point: one
# real limit (correlated features sharing importance, impossible rows, association not
# causation, extrapolation outside the train months). No point for "the model is a black
# box" without a reason.
# ### END SOLUTION

# %% [markdown] given="model-card-text"
# ## 6. A model card, as data
#
# A model card (Mitchell et al., 2019) is a short document that goes with a model: what it
# is for and not for, what data it was trained and evaluated on, how well it does (and on
# whom), and its limits. Written as data, it can be validated, versioned with the model
# and checked by a machine before a deployment. This lab keeps a JSON schema in
# `model_card.schema.json`, in the form of the Model Card Toolkit's schema v0.0.2 (the
# toolkit's package cannot be installed next to TensorFlow 2.21, so the schema is kept
# here and checked with `jsonschema`). Open it: it refuses unknown fields.
#
# **Your task.** Write `build_model_card()`, returning a dict that validates and says:
# the model's `name` and a `version` with today's `date`; the architecture and the input
# and output formats; the three **datasets** (train months, the validation month, the
# test months), each with a description of its period, size and role; the **metrics**
# on the test months (`AUC` and `Brier score` of the calibrated model, as `type`, `value`
# and `slice`), and the baseline's for comparison; the **intended use** (`use_cases`)
# and users; at least two **limitations**; and a trade-off or ethical consideration.

# %% given="model-card-schema"
MODEL_CARD_SCHEMA = json.loads((LAB_DIR / "model_card.schema.json").read_text())
card_validator = jsonschema.Draft7Validator(MODEL_CARD_SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
final_metrics = {"auc": roc_auc_score(test["pays_out"], calibrated["test"]),
                 "brier": brier_score_loss(test["pays_out"], calibrated["test"])}


# %% solution="build-model-card"
def build_model_card():
    ### BEGIN SOLUTION
    def period(name, rows, months, role):
        return {"name": name, "link": "https://github.com/tidyverse/nycflights13",
                "description": (f"nycflights13, departures from New York in 2013, months {list(months)}: "
                                f"{len(rows)} flights, payout rate {rows['pays_out'].mean():.3f}. {role}")}

    test_slice = "test: November and December 2013"
    return {
        "schema_version": "0.0.2",
        "model_details": {
            "name": "pays-out-boosted-trees",
            "overview": "Probability that a flight's delay insurance pays out, quoted two hours before departure.",
            "documentation": (f"Gradient-boosted trees chosen by an Optuna TPE search of {TRIAL_BUDGET} trials "
                              "on the validation AUC, then Platt-calibrated on the validation month. The "
                              "premium is PAYOUT_CENTS x probability x (1 + LOADING)."),
            "owners": [{"name": "Deep Learning in the Cloud, lab 4", "contact": "the course's instructors"}],
            "version": {"name": "1", "date": date.today().isoformat(), "diff": "First version."},
            "licenses": [{"identifier": "proprietary"}],
            "references": [{"reference": "https://doi.org/10.1145/3287560.3287596"}],
        },
        "model_parameters": {
            "model_architecture": (f"scikit-learn HistGradientBoostingClassifier {best_config} on a balanced "
                                   f"sample of {len(search_sample)} train-month flights, followed by Platt "
                                   "scaling (a logistic regression on the logit) fitted on September."),
            "data": [
                period("train", train, TRAIN_MONTHS, f"Training; the search used a seeded sample of "
                       f"{PAYING_ROWS} paying and {NOT_PAYING_ROWS} non-paying flights."),
                period("validation", validation, VALIDATION_MONTHS,
                       "Model selection (the search's objective) and calibration."),
                period("test", test, TEST_MONTHS, "Reported once, at the end; October is a gap."),
            ],
            "input_format": f"{len(best_columns)} float32 quote-time features: {', '.join(best_columns)}.",
            "output_format": "A calibrated probability in [0, 1] that the flight pays out.",
        },
        "quantitative_analysis": {"performance_metrics": [
            {"type": "AUC", "value": round(final_metrics["auc"], 4), "slice": test_slice},
            {"type": "Brier score", "value": round(final_metrics["brier"], 4), "slice": test_slice},
            {"type": "AUC of the lab-5 baseline (hour only)", "value": round(BASELINE["auc"], 4),
             "slice": test_slice},
            {"type": "Brier score of the lab-5 baseline (hour only)", "value": round(BASELINE["brier"], 4),
             "slice": test_slice},
        ]},
        "considerations": {
            "users": [{"description": "The insurer's pricing service, which turns the probability into a premium."}],
            "use_cases": [{"description": ("Pricing flight-delay insurance for flights departing New York, "
                                           "quoted at most two hours before departure.")}],
            "limitations": [
                {"description": "Trained on one year (2013) of three New York airports; not valid elsewhere."},
                {"description": ("Calibrated on September, a calm month; the level drifts with the season "
                                 "and must be recalibrated on recent data.")},
                {"description": "The test months lie outside the train months: month effects are extrapolated."},
            ],
            "tradeoffs": [{"description": "Selected on ranking (AUC); the level comes from a two-parameter calibration."}],
            "ethical_considerations": [{
                "name": "Automated prices for consumers",
                "mitigation_strategy": ("No personal data is used; quotes are explainable by flight features, and a "
                                        "person reviews complaints (GDPR Article 22)."),
            }],
        },
    }
    ### END SOLUTION


# %% given="validate-model-card"
model_card = build_model_card()
problems = sorted(card_validator.iter_errors(model_card), key=lambda e: list(e.absolute_path))
for problem in problems:
    print("model card:", "/".join(map(str, problem.absolute_path)) or "(top)", "-", problem.message)
print(json.dumps(model_card, indent=1)[:1500])

# %% tests="model-card-validates" points=3
import jsonschema  # noqa: F811 -- test cells stand on their own

validator = jsonschema.Draft7Validator(MODEL_CARD_SCHEMA, format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
errors = sorted(validator.iter_errors(model_card), key=lambda e: list(e.absolute_path))
assert not errors, (
    f"The model card does not validate against model_card.schema.json: at "
    f"{'/'.join(map(str, errors[0].absolute_path)) if errors else ''}: "
    f"{errors[0].message if errors else ''}. See build_model_card in section 6")
considerations = model_card.get("considerations", {})
assert considerations.get("use_cases"), (
    "The model card must name the intended use (considerations.use_cases): see section 6")
assert len(considerations.get("limitations", [])) >= 2, (
    "The model card must name at least two limitations (considerations.limitations): see section 6")
### BEGIN HIDDEN TESTS
datasets = model_card.get("model_parameters", {}).get("data", [])
assert len(datasets) >= 3 and all(d.get("description") for d in datasets), (
    "The model card must describe the train, validation and test data (model_parameters.data), each "
    "with a description: see section 6")
metrics = model_card.get("quantitative_analysis", {}).get("performance_metrics", [])
by_type = {m["type"].lower(): m["value"] for m in metrics}
assert abs(by_type.get("auc", -1) - final_metrics["auc"]) < 1e-3, (
    "The model card's AUC must be the calibrated model's AUC on the test months: see section 6")
assert abs(by_type.get("brier score", -1) - final_metrics["brier"]) < 1e-3, (
    "The model card's Brier score must be the calibrated model's on the test months: see section 6")
assert model_card.get("model_details", {}).get("version", {}).get("date"), (
    "The model card must date its version (model_details.version.date): see section 6")
### END HIDDEN TESTS
print("model card validates and names use, data, metrics and limits")

# %% [markdown] given="cost-text"
# ## 7. The bill: the same search, managed or on the lab machine
#
# `automl-prices.toml` holds dated prices: where each was read, when, and whether it
# could be checked (most could not be from here, and say so). A managed service bills
# time on its machines, often with a minimum: a managed AutoML budget is set in node
# hours, and nobody can buy a forty-second AutoML run. The comparison is rough on purpose:
# a managed AutoML run does far more than twenty trials (feature engineering, several
# families, ensembling) and a VM bills while you read the output; the point is the order of
# magnitude, and the habit of writing down the price, its date and its source.
#
# **Your task.** Write `search_cost_usd(search_seconds, prices)`: for every offer in
# `prices["offers"]`, the cost of running for `search_seconds`, billed as
# `max(hours, minimum_billed_hours) × usd_per_hour`, as a dict from the offer's name to
# US dollars (a float, not rounded).

# %% given="prices"
PRICES = tomllib.loads((LAB_DIR / "automl-prices.toml").read_text())
for name, offer in PRICES["offers"].items():
    flag = "" if offer["verified"] else "  (not verified here)"
    print(f"{name:<36} {offer['usd_per_hour']:>7.3f} USD/h, read {offer['read_on']}{flag}")


# %% solution="search-cost"
def search_cost_usd(search_seconds, prices):
    ### BEGIN SOLUTION
    hours = search_seconds / 3600
    return {name: max(hours, offer["minimum_billed_hours"]) * offer["usd_per_hour"]
            for name, offer in prices["offers"].items()}
    ### END SOLUTION


# %% given="price-the-search"
costs = search_cost_usd(SEARCH_SECONDS, PRICES)
for name, usd in sorted(costs.items(), key=lambda item: -item[1]):
    print(f"{name:<36} {usd:>10.4f} USD for a {SEARCH_SECONDS:.0f} s search")

# %% tests="search-cost-arithmetic" points=2
table = {"offers": {"managed": {"usd_per_hour": 20.0, "minimum_billed_hours": 1.0},
                    "vm": {"usd_per_hour": 0.5, "minimum_billed_hours": 0.0}}}
got = search_cost_usd(1800, table)
assert set(got) == {"managed", "vm"}, (
    f"search_cost_usd must price every offer of the table, got {sorted(got)}: see section 7")
assert math.isclose(got["vm"], 0.25), (
    f"Half an hour at 0.5 USD per hour costs 0.25 USD, search_cost_usd says {got['vm']}: see section 7")
### BEGIN HIDDEN TESTS
assert math.isclose(got["managed"], 20.0), (
    "A managed offer with a minimum of one billed hour costs a full hour for half an hour's run: "
    "see the max() in section 7")
assert math.isclose(search_cost_usd(7200, table)["managed"], 40.0), (
    "Two hours of the managed offer cost twice its hourly price: see section 7")
assert math.isclose(sum(search_cost_usd(SEARCH_SECONDS, PRICES).values()), sum(costs.values())), (
    "search_cost_usd must read the prices it is given: see section 7")
### END HIDDEN TESTS
print("cost arithmetic OK")

# %% [markdown] given="law-text"
# ## 8. The law, for this product sold in the EU
#
# Chapter 4 sets out the rules as they stand in December 2026, with their sources. Answer
# in your own words, in three to six sentences each, citing the article you rely on. These
# answers are graded by hand.

# %% [markdown] answer="ai-act-risk-class" points=3
# **The AI Act.** In which risk class of the EU AI Act (Regulation (EU) 2024/1689) does
# this product's pricing model fall, and why? Which obligations does the provider have in
# any case, and from which dates do they apply?
#
# ### BEGIN SOLUTION
# *Model answer.* Not high-risk: Annex III point 5(c) lists AI systems for "risk assessment
# and pricing in relation to natural persons in the case of life and health insurance";
# flight-delay insurance is neither, and the model prices flights, not persons (no personal
# data among its inputs). It is not a prohibited practice (Article 5) either. It is therefore
# a minimal-risk system under the Act: no conformity assessment, no registration. What
# applies anyway: AI literacy of the staff who run it (Article 4, since 2 February 2025);
# transparency duties of Article 50 only if it interacted with people as a chatbot, which a
# pricing model does not. Other law applies in full: the GDPR when personal data is
# processed, consumer and insurance-distribution law. The high-risk obligations (2 August
# 2026 in Article 113 as adopted) would move to 2 December 2027 under the Commission's
# November 2025 digital omnibus, on which a provisional agreement of May 2026 is reported;
# until it is published in the Official Journal the adopted dates stand. For this product
# that changes nothing.
#
# *Rubric (3 points).* 1 point: minimal risk / not high-risk, with the reason (Annex III
# 5(c) names life and health insurance only; not a natural person's risk). 1 point: names
# what still applies (Article 4 literacy, GDPR, or sector law) with a date. 1 point: the
# answer separates the Act as adopted from the omnibus proposal, or notes that adding
# personal data (a traveller's history) would change the analysis. No point for "high-risk
# because it is insurance".
# ### END SOLUTION

# %% [markdown] answer="article-22-automated-quotes" points=3
# **GDPR Article 22.** If quotes were fully automated and used personal data (say, the
# traveller's claims history), what would Article 22 GDPR require, and what does the Court
# of Justice's case law (SCHUFA, C-634/21, 2023; Dun & Bradstreet Austria, C-203/22, 2025)
# add about explanations?
#
# ### BEGIN SOLUTION
# *Model answer.* Article 22(1) gives the data subject the right not to be subject to a
# decision based solely on automated processing that produces legal effects or similarly
# significantly affects them; a refused or much dearer policy can be such a decision. It is
# allowed if necessary for a contract, authorised by law, or based on explicit consent
# (22(2)), and then the controller must provide at least human intervention, a way to
# express one's view and to contest the decision (22(3)); Articles 13(2)(f), 14(2)(g) and
# 15(1)(h) require "meaningful information about the logic involved". SCHUFA: a score that
# plays a determining role in a decision taken by someone else is itself such a decision.
# Dun & Bradstreet: the explanation must enable the person to understand and contest it, a
# description of the procedure and principles actually applied, not a formula or the full
# algorithm; trade secrets are weighed by a court or authority, not a blanket refusal.
# For this lab's model, which uses no personal data, Article 22 does not apply.
#
# *Rubric (3 points).* 1 point: the Article 22 test (solely automated, legal or similarly
# significant effect) and its exceptions. 1 point: the safeguards (human intervention,
# contest) and the information duty. 1 point: what one of the rulings adds, correctly.
# ### END SOLUTION

# %% [markdown] answer="us-transfer-of-training-data" points=3
# **Transfers.** May the insurer copy its training data (here: flight schedules, outcomes
# and weather; in a real product also the customers' policies) to a cloud region in the
# United States? What legal basis would it use, and what is the status of that basis?
# What else must it check about the data itself?
#
# ### BEGIN SOLUTION
# *Model answer.* The nycflights13 data holds no personal data (flights, not people), so the
# GDPR's transfer rules (Chapter V) do not apply to it; its licence does (nycflights13 is
# published under CC0, so copying is allowed; the weather data comes from public US
# sources). Customer policies are personal data: a transfer needs a Chapter V basis. For a
# US provider certified under the EU-US Data Privacy Framework the Commission's adequacy
# decision of 10 July 2023 (Article 45) is the basis; the General Court dismissed the
# challenge in Latombe (T-553/23) on 3 September 2025, and Mr Latombe appealed to the Court
# of Justice on 31 October 2025 (C-703/25 P, pending), so the basis stands but may fall as
# its predecessors did (Schrems I and II). Prudent practice: standard contractual clauses as a fallback, a transfer
# impact assessment, or an EU region. A provider's EU region alone is not always enough
# (access from the US, the CLOUD Act).
#
# *Rubric (3 points).* 1 point: separates personal from non-personal data, and names the
# licence question for the training data. 1 point: the DPF adequacy decision as the basis
# (Article 45), or SCCs (Article 46). 1 point: the status (Latombe dismissed by the General
# Court in 2025, appeal pending) and a fallback.
# ### END SOLUTION

# %% [markdown] given="wrap-up-text"
# ## 9. Wrap-up
#
# The cell below prints the lab's own wall time on this machine. Compare it with the
# managed service's minimum bill of section 7, and with chapter 4's discussion of when
# a managed run is worth it: data too big for one machine, a team without the skills, or
# the audit trail a platform keeps for you.

# %% given="wrap-up"
print(f"lab ran {time.perf_counter() - LAB_START:.0f} s; search {SEARCH_SECONDS:.0f} s of it")
