# %% [markdown] given="lab-goal"
# # Lab 8: Continuous deployment of a machine-learning model
#
# The insurer's payout model (lab 7 served it, lab 3 put it on Kubernetes) was trained on
# January to August 2013. It is now the end of the year. November and December flights have
# landed, their payouts are known, and the weather of a New York winter looks nothing like
# the summer the model last saw. Retraining is the easy part. This lab is about
# everything around it that lets a team ship a new model **every week without fear**:
#
# | section | what you build | graded |
# | --- | --- | --- |
# | 1 | a **model registry** (MLflow, local SQLite): versions, the `champion` alias | `registry-versions` |
# | 2 | **drift**: PSI and Kolmogorov–Smirnov per feature, summer against winter, a retraining trigger | `psi-drift` |
# | 3 | two retrained candidates, registered as versions 2 and 3 | |
# | 4 | a **validation gate**: quality, calibration, subgroups, p95 latency, signature | `validation-gate` |
# | 5 | a **hot swap**: a gRPC server moves to a new version under load, zero failed requests | `hot-swap` |
# | 6 | a **canary controller** that rolls a faulty version back by itself and promotes a healthy one | `canary-decision` |
# | 7 | the **pipeline** as a GitHub Actions workflow, linted offline, and the image's Dockerfile | `deploy-workflow` |
#
# Everything runs on this machine: no tracking server, no cloud account, no network. The
# servers bind `127.0.0.1`; the last cell stops them.

# %% given="setup"
import contextlib
import json
import logging
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter, deque
from concurrent import futures
from dataclasses import dataclass, field
from pathlib import Path

# Quiet libraries, because nbgrader fails a graded cell that writes anything to stderr:
# TensorFlow's C++ core logs errors only, gRPC's core logs nothing. MLflow (3.2 and later)
# sends anonymous usage telemetry unless told not to: this lab has no network and wants
# none, so both switches it honours are set before it is imported. Its progress bars and
# "Successfully registered model" lines go to stderr: off too. Failures still reach you
# as exceptions.
os.environ["TF_CPP_MIN_LOG_LEVEL"] = "2"
os.environ["GRPC_VERBOSITY"] = "NONE"
os.environ.pop("GRPC_TRACE", None)
os.environ["MLFLOW_DISABLE_TELEMETRY"] = "true"
os.environ["DO_NOT_TRACK"] = "true"
os.environ["MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"] = "false"
os.environ["MLFLOW_CONFIGURE_LOGGING"] = "false"
os.environ["GIT_PYTHON_REFRESH"] = "quiet"  # no git repository here: MLflow need not look for one

import grpc
import keras
import matplotlib.pyplot as plt
import mlflow
import numpy as np
import pandas as pd
import tensorflow as tf
from mlflow import MlflowClient
from scipy import stats
from tensorflow_serving.apis import predict_pb2, prediction_service_pb2_grpc

from dlcloud import features as quote
from dlcloud import kube
from dlcloud.net import LOOPBACK, free_port

# MLflow re-enables its own warnings inside some calls: warnings go to the logging system
# instead, where they stay below ERROR. It prints notes ("Created version '2' ...") straight
# to stderr: the cells that register send them to the cell's output (mlflow_notes_shown()).
logging.captureWarnings(True)
for noisy in ("mlflow", "alembic", "absl", "py.warnings"):
    logging.getLogger(noisy).setLevel(logging.ERROR)



def mlflow_notes_shown():
    # MLflow's notes on stdout, where they are read, rather than stderr, where nbgrader fails a cell.
    return contextlib.redirect_stderr(sys.stdout)


tf.config.threading.set_intra_op_parallelism_threads(2)
tf.config.threading.set_inter_op_parallelism_threads(1)
tf.constant(0.0).numpy()  # TensorFlow looks for GPUs (and logs) here, not in a graded cell
keras.utils.set_random_seed(8)

LAB_DIR = Path.cwd()
WORK = Path(tempfile.mkdtemp(prefix="lab8-"))
RUNNING = []  # every server and thread this notebook starts; the last cell stops them
MODEL_NAME = quote.MODEL_NAME
COLUMNS = list(quote.FEATURES)
print("TensorFlow", tf.__version__, "| MLflow", mlflow.__version__, "| scratch folder", WORK)

# %% [markdown] given="data-text"
# ## 0. The data and the model in production
#
# `dlcloud.features.quote_features()` builds the course's point-in-time features, the ones
# the insurer knows when it quotes a flight (weather at the origin, recent payout rates).
# Version 1 of the model, the one in production, ships with the course in TensorFlow
# Serving's layout: `pays_out/1/saved_model.pb`. Its serving signature takes `features`,
# float32 `[batch, 12]`, and returns `output_0`, the payout probability.
#
# Three periods matter below: the months version 1 learnt from (January to August), the
# summer it saw last (June to August), and the newest labelled period, November and
# December, which no model has seen yet: every candidate is judged on it.

# %% given="data"
frame = quote.quote_features()
month = frame["sched_dep"].dt.month
periods = {
    "train": frame[month.isin(quote.TRAIN_MONTHS)],
    "summer": frame[month.isin((6, 7, 8))],
    "winter": frame[month.isin(quote.TEST_MONTHS)],
    "known": frame[month.isin(range(1, 11))],  # January to October: every outcome known before the gate's window
}
SHIPPED_V1 = quote.model_dir() / "1"


def xy(part: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    return part[COLUMNS].to_numpy(np.float32), part["pays_out"].to_numpy(np.float32)


def load_signature(saved_model_dir):
    # The serving function of a SavedModel: features float32 [batch, 12] -> output_0.
    return tf.saved_model.load(str(saved_model_dir)).signatures["serving_default"]


def predict_with(serving_fn, x: np.ndarray) -> np.ndarray:
    return serving_fn(features=tf.constant(x, dtype=tf.float32))["output_0"].numpy()[:, 0]


x_winter, y_winter = xy(periods["winter"])
v1 = load_signature(SHIPPED_V1)
print({name: len(part) for name, part in periods.items()}, "| payout rate in winter:",
      round(float(y_winter.mean()), 4), "| v1 mean prediction:", round(float(predict_with(v1, x_winter).mean()), 4))

# %% [markdown] given="registry-text"
# ## 1. A model registry
#
# A folder of SavedModels is not a registry. A registry records, for every version, where
# its files are, which run produced it (code, data, parameters, metrics), and lets people
# and programs refer to a version by a **name that moves**: "the champion", not "version
# 7". MLflow 2.9 introduced such *aliases* and deprecated the fixed stages (`Staging`,
# `Production`) they replace; an alias points at exactly one version, and moving it is how
# a deployment is expressed: `models:/pays_out@champion` always loads the current one.
#
# MLflow needs no server: a SQLite file holds the runs and the registry, a folder holds the
# artifacts. MLflow stores a model in its own `pyfunc` format; `PayoutModel` (given) wraps
# our SavedModel so that MLflow can load and call it without knowing TensorFlow. The
# signature we give MLflow is the model's contract: a tensor of float32 `[-1, 12]` in.

# %% given="registry-setup"
REGISTRY_DB = WORK / "mlflow.db"
mlflow.set_tracking_uri(f"sqlite:///{REGISTRY_DB}")
mlflow.set_registry_uri(f"sqlite:///{REGISTRY_DB}")
client = MlflowClient()
# Artifacts in the scratch folder too (MLflow's default is ./mlruns, beside the notebook).
mlflow.set_experiment(experiment_id=client.create_experiment("lab8-payout-model", artifact_location=(WORK / "artifacts").as_uri()))
CHAMPION = "champion"
MLFLOW_SIGNATURE = mlflow.models.ModelSignature(
    inputs=mlflow.types.Schema([mlflow.types.TensorSpec(np.dtype(np.float32), (-1, len(COLUMNS)))]),
    outputs=mlflow.types.Schema([mlflow.types.TensorSpec(np.dtype(np.float32), (-1,))]),
)


class PayoutModel(mlflow.pyfunc.PythonModel):
    """MLflow's view of a SavedModel: load it from the artifacts, call its serving signature."""

    def load_context(self, context):
        self.serving_fn = load_signature(context.artifacts["saved_model"])

    def predict(self, context, model_input, params=None):
        return predict_with(self.serving_fn, np.asarray(model_input, dtype=np.float32))


def saved_model_of(version: int) -> Path:
    # The SavedModel folder of a registered version, as the registry stores it (downloaded).
    local = mlflow.artifacts.download_artifacts(f"models:/{MODEL_NAME}/{version}",
                                                dst_path=str(WORK / "downloads" / str(version)))
    return next((Path(local) / "artifacts").glob("*/saved_model.pb")).parent


# %% [markdown] given="registry-task"
# Write `register(saved_model_dir, run_name, metrics, tags)`: one MLflow run that logs the
# metrics and tags and the model (`mlflow.pyfunc.log_model` with `PayoutModel()`, the
# SavedModel as the artifact `saved_model`, `MLFLOW_SIGNATURE`, and explicit
# `pip_requirements` so that MLflow does not inspect this environment), registered under
# `MODEL_NAME`; it returns the new version's number as an `int`. Then `set_champion(version)`
# moves the alias, and `champion_version()` reads it back from the registry.

# %% solution="registry-versions"
def register(saved_model_dir, run_name: str, metrics: dict, tags: dict | None = None) -> int:
    ### BEGIN SOLUTION
    with mlflow.start_run(run_name=run_name):
        mlflow.log_metrics(metrics)
        mlflow.set_tags(tags or {})
        info = mlflow.pyfunc.log_model(
            name="model", python_model=PayoutModel(), artifacts={"saved_model": str(saved_model_dir)},
            signature=MLFLOW_SIGNATURE, registered_model_name=MODEL_NAME,
            pip_requirements=[f"tensorflow=={tf.__version__}", f"mlflow=={mlflow.__version__}"],
        )
    return int(info.registered_model_version)
    ### END SOLUTION


def set_champion(version: int) -> None:
    ### BEGIN SOLUTION
    client.set_registered_model_alias(MODEL_NAME, CHAMPION, str(version))
    ### END SOLUTION


def champion_version() -> int:
    ### BEGIN SOLUTION
    return int(client.get_model_version_by_alias(MODEL_NAME, CHAMPION).version)
    ### END SOLUTION


# %% given="registry-v1"
v1_metrics = json.loads((quote.model_dir() / "metadata.json").read_text())["metrics"]["test"]
with mlflow_notes_shown():
    version_1 = register(SHIPPED_V1, "shipped-v1", {"winter_brier": v1_metrics["brier"], "winter_auc": v1_metrics["auc"]},
                         {"trained_on_months": "1-8", "origin": "course"})
    set_champion(version_1)
    champion = mlflow.pyfunc.load_model(f"models:/{MODEL_NAME}@{CHAMPION}")
champion_on_winter = champion.predict(x_winter[:256])
print("registered version", version_1, "| champion:", champion_version(),
      "| same predictions as the SavedModel:", bool(np.allclose(champion_on_winter, predict_with(v1, x_winter[:256]))))

# %% tests="test-registry" points=2
assert version_1 == 1, f"The first registered version must be 1, got {version_1!r}: see register() in section 1"
assert champion_version() == 1, f"The champion alias must point at version 1, got {champion_version()!r}: see set_champion()"
assert np.allclose(champion_on_winter, predict_with(v1, x_winter[:256]), atol=1e-6), (
    "models:/pays_out@champion must predict what the shipped SavedModel predicts: see the artifact in register()")
### BEGIN HIDDEN TESTS
assert str(client.get_registered_model(MODEL_NAME).aliases.get(CHAMPION)) == "1", (
    "The registry must record the champion alias on the registered model: see set_champion()")
run = client.get_run(client.get_model_version(MODEL_NAME, "1").run_id)
assert "winter_brier" in run.data.metrics, "register() must log the metrics it is given on the version's run: see section 1"
assert run.data.tags.get("trained_on_months") == "1-8", "register() must set the tags it is given on the run: see section 1"
### END HIDDEN TESTS

# %% [markdown] given="drift-text"
# ## 2. Has the world moved? Data drift
#
# A model in production sees inputs it was not trained on. **Data drift** is a change in the
# distribution of the inputs; **concept drift** a change in how the label depends on them
# (the same weather now delays more flights). Drift in the inputs is visible at once, before
# any label arrives, which is why it is monitored.
#
# The **population stability index** compares a feature's distribution in a reference period
# with a current one. Cut the reference into `bins` quantile bins (so that each holds about
# the same share of the reference), count the share `r_i` and `c_i` of each period in bin `i`,
# and sum
#
# ```text
# PSI = Σ (c_i − r_i) · ln(c_i / r_i)
# ```
#
# A bin that is empty in one period would make the logarithm infinite, so every share is
# smoothed away from zero first. The usual reading, from credit scoring: below 0.1 stable,
# 0.1 to 0.25 a moderate shift, above 0.25 a major shift. These thresholds are a convention,
# not a test: PSI grows with the number of bins and, on small samples, with noise alone.
# Features with few distinct values (a one-hot origin) have fewer bins than asked for:
# quantiles of a 0/1 column coincide.
#
# The two-sample **Kolmogorov–Smirnov** test (`scipy.stats.ks_2samp`) compares the largest
# gap between the two cumulative distributions. On hundreds of thousands of rows its p-value
# is tiny for differences that do not matter: read its statistic, not its p-value.

# %% solution="psi-drift"
PSI_BINS = 10
PSI_MODERATE, PSI_MAJOR = 0.1, 0.25
SMOOTHING = 1e-4  # the smallest share a bin may have, so that ln() stays finite


def psi(reference, current, bins: int = PSI_BINS) -> float:
    ### BEGIN SOLUTION
    reference = np.asarray(reference, dtype=float)
    current = np.asarray(current, dtype=float)
    inner = np.unique(np.quantile(reference, np.linspace(0, 1, bins + 1)[1:-1]))
    edges = np.concatenate([[-np.inf], inner, [np.inf]])
    ref_share = np.histogram(reference, edges)[0] / len(reference)
    cur_share = np.histogram(current, edges)[0] / len(current)
    ref_share, cur_share = np.clip(ref_share, SMOOTHING, None), np.clip(cur_share, SMOOTHING, None)
    return float(np.sum((cur_share - ref_share) * np.log(cur_share / ref_share)))
    ### END SOLUTION


def drift_level(value: float) -> str:
    ### BEGIN SOLUTION
    if value >= PSI_MAJOR:
        return "major"
    return "moderate" if value >= PSI_MODERATE else "stable"
    ### END SOLUTION


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, columns) -> pd.DataFrame:
    # One row per feature: psi, level, ks_statistic, ks_pvalue; sorted by psi, largest first.
    ### BEGIN SOLUTION
    rows = []
    for column in columns:
        value = psi(reference[column], current[column])
        ks = stats.ks_2samp(reference[column], current[column])
        rows.append({"feature": column, "psi": value, "level": drift_level(value),
                     "ks_statistic": float(ks.statistic), "ks_pvalue": float(ks.pvalue)})
    return pd.DataFrame(rows).set_index("feature").sort_values("psi", ascending=False)
    ### END SOLUTION


# %% [markdown] given="drift-run-text"
# The calendar features drift by construction (summer months are not winter months): they
# say nothing about the world and are left out of the trigger. Retraining is triggered when
# any other feature shows a major shift.

# %% given="drift-run"
CALENDAR = ("month", "day_of_week")
MONITORED = [c for c in COLUMNS if c not in CALENDAR]
drift = drift_report(periods["summer"], periods["winter"], MONITORED)
drifted = drift.index[drift["level"] == "major"].tolist()
retrain = bool(drifted)
print(drift.round(4).to_string())
print("retraining triggered:", retrain, "by", drifted)

figure, (left, right) = plt.subplots(1, 2, figsize=(11, 3.5))
left.barh(drift.index[::-1], drift["psi"][::-1], color=["tab:red" if v >= PSI_MAJOR else "tab:blue" for v in drift["psi"][::-1]])
for threshold in (PSI_MODERATE, PSI_MAJOR):
    left.axvline(threshold, color="grey", linestyle="--", linewidth=1)
left.set(xlabel="PSI, summer (reference) against winter", title="Drift per feature")
worst = drift.index[0]
right.hist([periods["summer"][worst], periods["winter"][worst]], bins=30, density=True, label=["summer", "winter"])
right.set(title=f"The most drifted feature: {worst}", xlabel=worst)
right.legend()
figure.tight_layout()
plt.show()

# %% tests="test-psi" points=3
rng = np.random.default_rng(0)
same = rng.normal(size=20_000)
assert psi(same, rng.normal(size=20_000)) < 0.01, "Two samples of one distribution must have a PSI near 0: see psi() in section 2"
shifted = psi(same, rng.normal(loc=1.0, size=20_000))
assert 0.6 < shifted < 1.5, f"A shift of one standard deviation has a PSI near 1 with 10 quantile bins, got {shifted:.3f}: see psi()"
assert drift_level(0.05) == "stable" and drift_level(0.1) == "moderate" and drift_level(0.3) == "major", (
    "drift_level must read PSI with the 0.1 and 0.25 thresholds (0.1 itself is moderate): see section 2")
assert list(drift.columns[:4]) == ["psi", "level", "ks_statistic", "ks_pvalue"], (
    "drift_report must have the columns psi, level, ks_statistic, ks_pvalue: see section 2")
assert retrain, "Summer against winter must trigger retraining (a major shift in some feature): see drift_report()"
### BEGIN HIDDEN TESTS
empty_bin = psi(np.arange(1000.0), np.full(1000, 2000.0))
assert np.isfinite(empty_bin) and empty_bin > PSI_MAJOR, (
    "A current period that falls into bins the reference leaves empty must give a large, finite PSI: smooth the shares in psi()")
binary = psi(np.r_[np.zeros(700), np.ones(300)], np.r_[np.zeros(300), np.ones(700)])
expected = (0.3 - 0.7) * np.log(0.3 / 0.7) + (0.7 - 0.3) * np.log(0.7 / 0.3)
assert abs(binary - expected) < 1e-3, (
    "A 0/1 feature has two bins, whatever `bins` says: merge equal quantile edges in psi()")
assert psi(same, same * 1.0) < 1e-9, "A sample against itself has a PSI of exactly 0: see psi()"
flipped = psi(rng.normal(loc=1.0, size=20_000), same)
assert abs(flipped - shifted) < 0.5, "PSI bins on the reference's quantiles, whichever period is the reference: see psi()"
assert drift["psi"].is_monotonic_decreasing, "drift_report must sort features by PSI, largest first: see section 2"
assert drift.loc[drift.index[0], "ks_statistic"] > 0.1, "ks_statistic must be scipy's two-sample KS statistic: see drift_report()"
### END HIDDEN TESTS

# %% [markdown] given="retrain-text"
# ## 3. Two candidates
#
# The trigger fired. Retraining is given here (lab 5 and lab 6 are about training), and it
# produces two candidates on purpose, in the same serving signature as version 1:
#
# * **version 2**, a hurried retrain on the summer months alone, the latest "full" season;
# * **version 3**, the shipped recipe on January to October, every month with known
#   outcomes, with one change the drift report suggests. `month` is a number from 1 to 12,
#   and a network trained on months 1 to 10 extrapolates months 11 and 12 from the trend of
#   the autumn (few delays), which is not what December is. The serving signature is a
#   contract (12 inputs in a fixed order) that cannot lose a column without breaking every
#   client, so version 3 keeps the input but is trained with the `month` column **shuffled
#   across the training rows**: it carries no information, and the network learns not to use it.
#
# Both go into the registry as versions, with their lineage as tags. Neither is the champion
# yet: that is the gate's decision.

# %% given="retrain"
def train_candidate(part: pd.DataFrame, export_dir: Path, epochs: int, seed: int, shuffled=()) -> Path:
    # The shipped model's recipe (normalise, 32, 16, sigmoid), exported with its signature.
    keras.utils.set_random_seed(seed)
    x, y = xy(part)
    for column in shuffled:  # same values, random rows: the column carries no information
        x[:, COLUMNS.index(column)] = np.random.default_rng(seed).permutation(x[:, COLUMNS.index(column)])
    normalise = keras.layers.Normalization()
    normalise.adapt(x)
    inputs = keras.Input(shape=(len(COLUMNS),), name="features", dtype="float32")
    hidden = keras.layers.Dense(32, activation="relu")(normalise(inputs))
    hidden = keras.layers.Dense(16, activation="relu")(hidden)
    model = keras.Model(inputs, keras.layers.Dense(1, activation="sigmoid")(hidden))
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy")
    model.fit(x, y, epochs=epochs, batch_size=1024, shuffle=True, verbose=0)
    model.export(str(export_dir), format="tf_saved_model", verbose=False)
    return export_dir


started = time.perf_counter()
candidate_dirs = {
    2: train_candidate(periods["summer"], WORK / "candidates" / "2", epochs=2, seed=2),
    3: train_candidate(periods["known"], WORK / "candidates" / "3", epochs=4, seed=13, shuffled=("month",)),
}
lineage = {2: "6-8", 3: "1-10, month shuffled"}
with mlflow_notes_shown():
    registered = {number: register(path, f"retrain-{number}", {}, {"trained_on_months": lineage[number]})
                  for number, path in candidate_dirs.items()}
print("trained and registered", registered, f"in {time.perf_counter() - started:.0f} s")

# %% [markdown] given="gate-text"
# ## 4. A validation gate
#
# A gate decides, without a human, whether a candidate may replace the champion. Each check
# answers a way a new model breaks production:
#
# * **quality against the current model**, on the same newest data: Brier score (the mean
#   squared error of the probability, which prices the premium) no worse than the champion's
#   by more than a tolerance, AUC (ranking) no lower by more than a tolerance;
# * **calibration**: the premium is payout × probability × 1.25, so a model whose mean
#   probability is off the observed payout rate misprices every policy, however well it ranks;
# * **subgroups**: an average can hide a model that got worse at one airport;
# * **latency**: the 95th percentile of one-row calls must fit the checkout's budget;
# * **the signature**: a model whose input is not `features` float32 `[batch, 12]` cannot be
#   called by the servers and clients already deployed.
#
# `evaluate` (given) measures one model into a plain dict. You write `gate(champion,
# candidate)`: a decision with **every** check's reason, passed or failed, so that the
# registry and the people reading it know why.

# %% given="gate-evaluate"
GATE_LIMITS = {
    "max_brier_increase": 0.0005,    # absolute: no worse than the champion by more than this
    "max_auc_decrease": 0.005,
    "max_calibration_gap": 0.01,     # |mean probability − payout rate| on the gate's data
    "max_subgroup_brier_ratio": 1.05,  # per origin airport, candidate / champion
    "max_p95_ms": 25.0,              # one-row calls, in-process
}
EXPECTED_SIGNATURE = {"input": "features", "input_dtype": "float32", "input_shape": [-1, 12],
                      "output": "output_0", "output_shape": [-1, 1]}


def signature_of(serving_fn) -> dict:
    (_, inputs), outputs = serving_fn.structured_input_signature, serving_fn.structured_outputs
    (name, spec), = inputs.items()
    (out_name, out_spec), = outputs.items()
    shape = [-1 if d is None else d for d in spec.shape.as_list()]
    return {"input": name, "input_dtype": spec.dtype.name, "input_shape": shape,
            "output": out_name, "output_shape": [-1 if d is None else d for d in out_spec.shape.as_list()]}


def brier(y, p) -> float:
    return float(np.mean((np.asarray(p, float) - np.asarray(y, float)) ** 2))


def evaluate(serving_fn, part: pd.DataFrame, latency_calls: int = 200) -> dict:
    x, y = xy(part)
    p = predict_with(serving_fn, x)
    origins = part["origin"].to_numpy()
    timings = []
    for row in x[:latency_calls]:
        start = time.perf_counter()
        predict_with(serving_fn, row[None, :])
        timings.append((time.perf_counter() - start) * 1000)
    return {
        "brier": brier(y, p),
        "auc": float(stats.mannwhitneyu(p[y == 1], p[y == 0]).statistic / ((y == 1).sum() * (y == 0).sum())),
        "mean_probability": float(p.mean()),
        "payout_rate": float(y.mean()),
        "subgroup_brier": {origin: brier(y[origins == origin], p[origins == origin]) for origin in quote.ORIGINS},
        "p95_ms": float(np.percentile(timings, 95)),
        "signature": signature_of(serving_fn),
    }


@dataclass
class GateDecision:
    accept: bool
    reasons: list = field(default_factory=list)  # one line per check: "quality: ... ok" / "... FAILED"


# %% solution="validation-gate"
def gate(champion: dict, candidate: dict, limits: dict = GATE_LIMITS) -> GateDecision:
    ### BEGIN SOLUTION
    checks = []

    def check(name: str, passed: bool, detail: str) -> None:
        checks.append((passed, f"{name}: {detail} {'ok' if passed else 'FAILED'}"))

    differences = sorted(key for key in EXPECTED_SIGNATURE if candidate["signature"].get(key) != EXPECTED_SIGNATURE[key])
    check("signature", not differences, f"differs in {differences}" if differences else "as expected")
    check("quality (brier)", candidate["brier"] <= champion["brier"] + limits["max_brier_increase"],
          f"{candidate['brier']:.5f} against champion {champion['brier']:.5f}")
    check("quality (auc)", candidate["auc"] >= champion["auc"] - limits["max_auc_decrease"],
          f"{candidate['auc']:.4f} against champion {champion['auc']:.4f}")
    gap = abs(candidate["mean_probability"] - candidate["payout_rate"])
    check("calibration", gap <= limits["max_calibration_gap"],
          f"mean probability {candidate['mean_probability']:.4f}, payout rate {candidate['payout_rate']:.4f}")
    for group, value in candidate["subgroup_brier"].items():
        ratio = value / max(champion["subgroup_brier"][group], 1e-12)
        check(f"subgroup {group}", ratio <= limits["max_subgroup_brier_ratio"],
              f"brier {value:.5f}, {ratio:.3f} x champion")
    check("latency", candidate["p95_ms"] <= limits["max_p95_ms"],
          f"p95 {candidate['p95_ms']:.2f} ms, budget {limits['max_p95_ms']} ms")
    return GateDecision(accept=all(passed for passed, _ in checks), reasons=[reason for _, reason in checks])
    ### END SOLUTION


# %% given="gate-run"
reports = {1: evaluate(v1, periods["winter"])}
for number in registered.values():
    reports[number] = evaluate(load_signature(saved_model_of(number)), periods["winter"])
decisions = {number: gate(reports[1], reports[number]) for number in registered.values()}
for number, decision in decisions.items():
    verdict = "ACCEPTED" if decision.accept else "REJECTED"
    print(f"version {number}: {verdict}\n  " + "\n  ".join(decision.reasons))
    client.set_model_version_tag(MODEL_NAME, str(number), "gate", verdict.lower())
accepted = [number for number, decision in decisions.items() if decision.accept]
if accepted:
    set_champion(max(accepted))
print("champion is now version", champion_version())

# %% tests="test-validation-gate" points=3
assert decisions[2].accept is False, f"The summer-only candidate (version 2) must be rejected: {decisions[2].reasons}: see gate()"
assert decisions[3].accept is True, f"The January-October candidate (version 3) must be accepted: {decisions[3].reasons}: see gate()"
assert champion_version() == 3, "After the gate, the champion alias must point at the accepted version 3: see section 4"
assert any("FAILED" in reason for reason in decisions[2].reasons), (
    "A rejection must say which check FAILED in its reasons: see gate() in section 4")
assert len(decisions[3].reasons) >= 5, "An acceptance must list every check it passed as a reason: see gate()"
### BEGIN HIDDEN TESTS
where = "gate() in section 4"
base = {"brier": 0.08, "auc": 0.72, "mean_probability": 0.10, "payout_rate": 0.10, "p95_ms": 2.0,
        "subgroup_brier": {"EWR": 0.09, "JFK": 0.08, "LGA": 0.07}, "signature": dict(EXPECTED_SIGNATURE)}
assert gate(base, dict(base)).accept, f"A candidate equal to the champion on every check must pass: see {where}"
slow = {**base, "p95_ms": 80.0}
assert not gate(base, slow).accept, f"A candidate over the p95 latency budget must be rejected: see {where}"
assert any("latency" in r and "FAILED" in r for r in gate(base, slow).reasons), f"The latency reason must say FAILED: see {where}"
renamed = {**base, "signature": {**EXPECTED_SIGNATURE, "input": "inputs"}}
assert not gate(base, renamed).accept, f"A candidate whose input is not named `features` must be rejected: see {where}"
wide = {**base, "signature": {**EXPECTED_SIGNATURE, "input_shape": [-1, 13]}}
assert not gate(base, wide).accept, f"A candidate with another input shape must be rejected: see {where}"
biased = {**base, "mean_probability": 0.14}
assert not gate(base, biased).accept, f"A candidate whose mean probability is off the payout rate must be rejected: see {where}"
worse_at_one = {**base, "subgroup_brier": {"EWR": 0.12, "JFK": 0.08, "LGA": 0.07}}
assert not gate(base, worse_at_one).accept, f"A candidate much worse at one airport must be rejected: see {where}"
slightly = {**base, "brier": 0.0802, "auc": 0.718}
assert gate(base, slightly).accept, f"Changes within the tolerances must pass: see {where}"
worse = {**base, "brier": 0.085}
assert not gate(base, worse).accept, f"A candidate with a clearly worse Brier score must be rejected: see {where}"
### END HIDDEN TESTS

# %% [markdown] given="server-text"
# ## 5. A hot swap under load
#
# The gate accepted version 3 and moved the alias. Deploying it means that the servers
# answering quotes start to use it, **without a failed request**. TensorFlow Serving does
# this by watching its model folder: every numeric subfolder `<model>/<version>/` is a
# version, and when a higher one appears it loads it, warms it up, switches new requests to
# it, and unloads the old one once no request uses it.
#
# Below is a small lab-7-style gRPC server (TensorFlow Serving's `PredictionService.Predict`,
# so lab 7's clients work unchanged) that asks a `VersionedModel` for the model to use on
# each request. The response says which version answered. You write `VersionedModel`:
#
# * `poll()` looks at the folder and, if a version higher than the current one is
#   **complete** (its `saved_model.pb` is there), loads it fully, **warms it up** with one
#   call (the first call of a TensorFlow function is slow: it traces), and only then swaps
#   it in, atomically. A version that fails to load is recorded and skipped; the current one
#   keeps serving. Record each event in `events` as `(time.monotonic(), what, version)`.
# * `use()` is a context manager that yields `(version, serving_fn)` and keeps count of the
#   requests in flight per version; an old version is *retired* (dropped, with an event)
#   only when none is using it.
#
# A publisher makes a version appear atomically too: it copies the files into a hidden
# temporary folder beside the others and renames it to its number. A rename within one
# file system is atomic, so a watcher never sees half a version by that route (but another
# tool might write in place: hence the check for `saved_model.pb`).

# %% given="server"
class PredictionService(prediction_service_pb2_grpc.PredictionServiceServicer):
    """TensorFlow Serving's Predict, answered by whatever `models.use()` hands out."""

    def __init__(self, models, name: str = MODEL_NAME):
        self.models, self.name = models, name

    def Predict(self, request, context):
        if request.model_spec.name != self.name or "features" not in request.inputs:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "send model_spec.name pays_out and input `features`")
        rows = tf.make_ndarray(request.inputs["features"]).astype(np.float32)
        try:
            with self.models.use() as (version, serving_fn):
                probabilities = predict_with(serving_fn, rows)
        except LookupError as error:  # no version loaded yet
            context.abort(grpc.StatusCode.UNAVAILABLE, str(error))
        except Exception as error:  # the model failed: say what kind of failure, not how
            context.abort(grpc.StatusCode.INTERNAL, f"prediction failed: {type(error).__name__}")
        response = predict_pb2.PredictResponse()
        response.model_spec.name = self.name
        response.model_spec.version.value = version
        response.outputs["output_0"].CopyFrom(tf.make_tensor_proto(probabilities[:, None]))
        return response


def start_server(models, workers: int = 8) -> tuple[grpc.Server, str]:
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=workers), options=[("grpc.so_reuseport", 0)])
    prediction_service_pb2_grpc.add_PredictionServiceServicer_to_server(PredictionService(models), server)
    target = f"{LOOPBACK}:{free_port()}"
    server.add_insecure_port(target)
    server.start()
    RUNNING.append(server)
    return server, target


def publish(saved_model_dir: Path, base_dir: Path, version: int) -> Path:
    # Copy a SavedModel in as <base_dir>/<version>/, atomically: copy, then rename.
    staging = base_dir / f".incoming-{version}-{time.monotonic_ns()}"
    shutil.copytree(saved_model_dir, staging)
    final = base_dir / str(version)
    staging.rename(final)
    return final


class Watcher:
    """Calls `models.poll()` every `interval_s` in a thread until stopped."""

    def __init__(self, models, interval_s: float = 0.05):
        self.models, self.interval_s = models, interval_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="version-watcher", daemon=True)

    def _run(self):
        while not self._stop.wait(self.interval_s):
            self.models.poll()

    def start(self):
        self._thread.start()
        RUNNING.append(self)
        return self

    def stop(self, grace=None):
        self._stop.set()
        self._thread.join(timeout=5)


# %% solution="hot-swap"
class VersionedModel:
    """The versions of one model in `base_dir/<version>/`; serves the highest complete one."""

    def __init__(self, base_dir: Path):
        self.base_dir = Path(base_dir)
        self.events = []  # (time.monotonic(), "loaded" | "serving" | "failed" | "retired", version)
        ### BEGIN SOLUTION
        self._lock = threading.Lock()
        self._current = None  # (version, serving_fn)
        self._in_flight = Counter()
        self._retiring = {}  # version -> serving_fn, kept until its last request ends
        self._failed = set()
        ### END SOLUTION

    @property
    def version(self):
        # The version new requests get now, or None before the first one is loaded.
        ### BEGIN SOLUTION
        current = self._current
        return None if current is None else current[0]
        ### END SOLUTION

    def poll(self) -> None:
        ### BEGIN SOLUTION
        candidates = sorted((int(p.name) for p in self.base_dir.iterdir()
                             if p.is_dir() and p.name.isdigit() and (p / "saved_model.pb").is_file()),
                            reverse=True)
        for version in candidates:
            if self.version is not None and version <= self.version:
                return
            if version in self._failed:
                continue
            try:
                serving_fn = load_signature(self.base_dir / str(version))
                predict_with(serving_fn, np.zeros((1, len(COLUMNS)), np.float32))  # warm up: trace now
            except Exception:
                self._failed.add(version)
                self.events.append((time.monotonic(), "failed", version))
                continue
            self.events.append((time.monotonic(), "loaded", version))
            with self._lock:
                previous, self._current = self._current, (version, serving_fn)
                if previous is not None:
                    self._retiring[previous[0]] = previous[1]
                self.events.append((time.monotonic(), "serving", version))
                self._retire_idle()
            return
        ### END SOLUTION

    @contextlib.contextmanager
    def use(self):
        ### BEGIN SOLUTION
        with self._lock:
            if self._current is None:
                raise LookupError(f"no version of {self.base_dir.name} is loaded yet")
            version, serving_fn = self._current
            self._in_flight[version] += 1
        try:
            yield version, serving_fn
        finally:
            with self._lock:
                self._in_flight[version] -= 1
                self._retire_idle()
        ### END SOLUTION

    def _retire_idle(self) -> None:
        # Called with the lock held: drop the old versions that no request is using any more.
        ### BEGIN SOLUTION
        for version in [v for v in self._retiring if self._in_flight[v] == 0]:
            del self._retiring[version]
            self.events.append((time.monotonic(), "retired", version))
        ### END SOLUTION


# %% [markdown] given="load-text"
# The load generator: `clients` threads, each calling `Predict` with one quote row in a loop
# for `seconds`, every call with a deadline. Each call is recorded: when it started and
# ended, whether it succeeded, the status code, and which version answered.

# %% given="load-generator"
@dataclass
class Call:
    start: float
    end: float
    ok: bool
    code: str
    version: int | None


def predict_request(rows: np.ndarray) -> predict_pb2.PredictRequest:
    request = predict_pb2.PredictRequest()
    request.model_spec.name = MODEL_NAME
    request.inputs["features"].CopyFrom(tf.make_tensor_proto(rows.astype(np.float32)))
    return request


def generate_load(target: str, seconds: float, clients: int = 4, deadline_s: float = 2.0) -> list[Call]:
    stop_at = time.monotonic() + seconds
    requests = [predict_request(x_winter[i:i + 1]) for i in range(64)]
    calls, lock = [], threading.Lock()

    def client_loop(index: int) -> None:
        with grpc.insecure_channel(target) as channel:
            stub = prediction_service_pb2_grpc.PredictionServiceStub(channel)
            n = index
            while time.monotonic() < stop_at:
                start = time.monotonic()
                try:
                    reply = stub.Predict(requests[n % len(requests)], timeout=deadline_s)
                    call = Call(start, time.monotonic(), True, "OK", reply.model_spec.version.value)
                except grpc.RpcError as error:
                    call = Call(start, time.monotonic(), False, error.code().name, None)
                with lock:
                    calls.append(call)
                n += clients

    threads = [threading.Thread(target=client_loop, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=seconds + deadline_s + 5)
    return sorted(calls, key=lambda call: call.start)


# %% given="hot-swap-run"
SERVING = WORK / "serving" / MODEL_NAME
SERVING.mkdir(parents=True)
publish(SHIPPED_V1, SERVING, 1)
models = VersionedModel(SERVING)
models.poll()
watcher = Watcher(models).start()
server, target = start_server(models)

appeared = {}


def deploy_champion_later(delay_s: float) -> None:
    # What the deploy step does: fetch the champion from the registry, publish it.
    time.sleep(delay_s)
    champion_dir = saved_model_of(champion_version())
    appeared[champion_version()] = time.monotonic()
    publish(champion_dir, SERVING, champion_version())


deployer = threading.Thread(target=deploy_champion_later, args=(1.5,), daemon=True)
deployer.start()
swap_calls = generate_load(target, seconds=5.0)
deployer.join()
watcher.stop()

failed = [call for call in swap_calls if not call.ok]
first_new = min((call.end for call in swap_calls if call.version == 3), default=None)
swap_seconds = None if first_new is None else first_new - appeared[3]
print(f"{len(swap_calls)} requests, {len(failed)} failed; answered by", dict(Counter(c.version for c in swap_calls)))
print("time from version 3's folder appearing to its first answer:",
      "never" if swap_seconds is None else f"{swap_seconds:.2f} s")
for moment, what, version in models.events:
    print(f"  {moment - swap_calls[0].start:6.2f} s  {what:<8} version {version}")

t0 = swap_calls[0].start
plt.figure(figsize=(9, 2.5))
plt.scatter([c.start - t0 for c in swap_calls], [c.version or 0 for c in swap_calls], s=4,
            c=["tab:green" if c.ok else "tab:red" for c in swap_calls])
plt.axvline(appeared[3] - t0, color="grey", linestyle="--", label="version 3's folder appears")
plt.yticks([0, 1, 3], ["failed", "v1", "v3"])
plt.xlabel("seconds into the load test")
plt.title("Which version answered when")
plt.legend(loc="center right")
plt.show()

# %% tests="test-hot-swap" points=4
assert len(swap_calls) > 50, f"The load generator must have completed requests, got {len(swap_calls)}: see section 5"
assert not failed, (f"A hot swap must fail no request, {len(failed)} failed with {sorted({c.code for c in failed})}: "
                    "see VersionedModel.use() and poll() in section 5")
assert {1, 3} <= {c.version for c in swap_calls}, "Both version 1 and version 3 must have answered: see VersionedModel.poll()"
assert models.version == 3, "After the swap, new requests must get version 3: see VersionedModel.poll()"
### BEGIN HIDDEN TESTS
switched = next(moment for moment, what, version in models.events if what == "serving" and version == 3)
late_v1 = [c for c in swap_calls if c.version == 1 and c.start > switched + 0.05]
assert not late_v1, "Requests that start after the switch must get version 3, never version 1 again: see use()"
assert [what for _, what, version in models.events if version == 3][:2] == ["loaded", "serving"], (
    "A version must be loaded (and warmed up) before it serves: record 'loaded' then 'serving' in poll()")
assert any(what == "retired" and version == 1 for _, what, version in models.events), (
    "Version 1 must be retired once its last request ends: see VersionedModel.use()")
probe_dir = WORK / "probe" / MODEL_NAME
probe_dir.mkdir(parents=True)
publish(SHIPPED_V1, probe_dir, 1)
probe = VersionedModel(probe_dir)
probe.poll()
(probe_dir / "5" / "variables").mkdir(parents=True)  # half-written in place: no saved_model.pb yet
probe.poll()
assert probe.version == 1, "A version folder without saved_model.pb is not complete and must not be loaded: see poll()"
(probe_dir / "6").mkdir()
(probe_dir / "6" / "saved_model.pb").write_bytes(b"not a SavedModel")
probe.poll()
assert probe.version == 1, "A version that fails to load must be skipped while the current one keeps serving: see poll()"
assert any(what == "failed" and version == 6 for _, what, version in probe.events), (
    "A version that fails to load must be recorded as 'failed' in events: see poll()")
with probe.use() as (version, _):
    assert version == 1, "use() must hand out the current version: see section 5"
(probe_dir / "not-a-version").mkdir()
probe.poll()
assert probe.version == 1, "Folders whose name is not a number are not versions: see poll()"
assert not any(version == 5 for _, _, version in probe.events), (
    "A half-written version must be waited for, not loaded or marked failed: check for saved_model.pb in poll()")
shutil.copytree(SHIPPED_V1, probe_dir / "5", dirs_exist_ok=True)  # the writer finishes version 5
probe.poll()
assert probe.version == 5, "A version folder that becomes complete later must then be loaded: see poll()"
### END HIDDEN TESTS

# %% [markdown] given="canary-text"
# ## 6. A canary that rolls back by itself
#
# A hot swap trusts the gate completely: every request moves at once. A **canary** trusts
# it less. A small share of live traffic goes to the candidate while the stable version
# keeps the rest; a controller compares the two over a window and either **rolls back**
# (all traffic to stable, by itself, at night, without waking anyone) or **promotes**.
# What the gate cannot see, the canary can: a version that fails on real requests, or gets
# slow under real load.
#
# The router and the controller's loop are given: the router sends every `1/share`-th
# request to the canary and records each outcome per arm; every `interval_s` the
# controller reads both arms' windows as plain numbers and asks **your** `decide`. The rule
# must not act on too little evidence (a minimum number of canary requests), must roll back
# when the canary's error rate or p95 latency is clearly worse than stable's, and must
# promote only after enough canary requests were healthy. `Faulty` injects faults into a
# version: a share of errors, or added latency.

# %% given="canary-router"
@dataclass
class Window:
    """One arm's recent requests as plain numbers: what `decide` reads."""
    requests: int
    errors: int
    p95_ms: float

    @property
    def error_rate(self) -> float:
        return self.errors / self.requests if self.requests else 0.0


class Faulty:
    """A serving function that fails a share of calls and/or adds latency."""

    def __init__(self, serving_fn, error_share: float = 0.0, extra_ms: float = 0.0, seed: int = 0):
        self.serving_fn, self.error_share, self.extra_ms = serving_fn, error_share, extra_ms
        self._rng = np.random.default_rng(seed)
        self._lock = threading.Lock()

    def __call__(self, **inputs):
        with self._lock:
            fail = self._rng.random() < self.error_share
        if self.extra_ms:
            time.sleep(self.extra_ms / 1000)
        if fail:
            raise RuntimeError("injected fault")
        return self.serving_fn(**inputs)


class CanaryRouter:
    """Stable and canary versions behind one `use()`, every `1/share`-th request to the canary."""

    def __init__(self, stable, canary, share: float = 0.2, window: int = 400):
        self.arms = {"stable": stable, "canary": canary}  # name -> (version, serving_fn)
        self.share, self._counter, self._lock = share, 0, threading.Lock()
        self.outcomes = {"stable": deque(maxlen=window), "canary": deque(maxlen=window)}

    @contextlib.contextmanager
    def use(self):
        with self._lock:
            self._counter += 1
            arm = "canary" if self.share and self._counter % round(1 / self.share) == 0 else "stable"
            version, serving_fn = self.arms[arm]
        start, ok = time.perf_counter(), False
        try:
            yield version, serving_fn
            ok = True
        finally:
            with self._lock:
                self.outcomes[arm].append((ok, (time.perf_counter() - start) * 1000))

    def window(self, arm: str) -> Window:
        with self._lock:
            outcomes = list(self.outcomes[arm])
        latencies = [ms for _, ms in outcomes]
        return Window(len(outcomes), sum(not ok for ok, _ in outcomes),
                      float(np.percentile(latencies, 95)) if latencies else 0.0)

    def rollback(self):
        with self._lock:
            self.share = 0.0

    def promote(self):
        with self._lock:
            self.arms["stable"], self.share = self.arms["canary"], 0.0


def run_canary(router: CanaryRouter, decide, seconds: float, interval_s: float = 0.25) -> tuple[list, list[Call]]:
    # Load on the router's server while a controller thread decides every interval_s.
    log, done = [], threading.Event()
    server, target = start_server(router)

    def controller():
        while not done.wait(interval_s):
            stable, canary = router.window("stable"), router.window("canary")
            action, reason = decide(stable, canary)
            log.append({"t": time.monotonic(), "action": action, "reason": reason,
                        "canary_requests": canary.requests, "canary_errors": canary.errors,
                        "canary_p95_ms": round(canary.p95_ms, 2), "stable_p95_ms": round(stable.p95_ms, 2)})
            if action in ("rollback", "promote"):
                getattr(router, action)()
                return

    thread = threading.Thread(target=controller, daemon=True)
    thread.start()
    calls = generate_load(target, seconds=seconds)
    done.set()
    thread.join(timeout=5)
    server.stop(grace=1).wait()
    return log, calls


# %% solution="canary-decision"
MIN_CANARY_REQUESTS = 40     # no verdict on fewer canary requests than this
PROMOTE_AFTER = 120          # promote after this many healthy canary requests
MAX_ERROR_RATE_INCREASE = 0.02
MAX_P95_RATIO = 2.0          # canary p95 against stable p95 ...
P95_SLACK_MS = 5.0           # ... plus this, so that sub-millisecond noise does not count


def decide(stable: Window, canary: Window) -> tuple[str, str]:
    # ("wait" | "rollback" | "promote", a reason with the numbers that decided it)
    ### BEGIN SOLUTION
    if canary.requests < MIN_CANARY_REQUESTS:
        return "wait", f"only {canary.requests} canary requests, need {MIN_CANARY_REQUESTS}"
    if canary.error_rate > stable.error_rate + MAX_ERROR_RATE_INCREASE:
        return "rollback", (f"canary error rate {canary.error_rate:.3f} against stable {stable.error_rate:.3f} "
                            f"(+{MAX_ERROR_RATE_INCREASE} allowed)")
    if canary.p95_ms > stable.p95_ms * MAX_P95_RATIO + P95_SLACK_MS:
        return "rollback", f"canary p95 {canary.p95_ms:.1f} ms against stable {stable.p95_ms:.1f} ms"
    if canary.requests >= PROMOTE_AFTER:
        return "promote", (f"{canary.requests} canary requests healthy: error rate {canary.error_rate:.3f}, "
                           f"p95 {canary.p95_ms:.1f} ms against stable {stable.p95_ms:.1f} ms")
    return "wait", f"{canary.requests} healthy canary requests so far, promote at {PROMOTE_AFTER}"
    ### END SOLUTION


# %% given="canary-run"
v3 = load_signature(SERVING / "3")
predict_with(v3, x_winter[:1])  # warm up, as the hot swap did
scenarios = {
    "errors": Faulty(v3, error_share=0.3, seed=1),
    "latency": Faulty(v3, extra_ms=40.0),
    "healthy": v3,
}
canary_runs = {}
for name, candidate_fn in scenarios.items():
    router = CanaryRouter(stable=(1, v1), canary=(3, candidate_fn))
    log, calls = run_canary(router, decide, seconds=4.0)
    canary_runs[name] = {"log": log, "calls": calls, "final": log[-1]["action"] if log else None,
                         "stable_version": router.arms["stable"][0]}
    failed_calls = sum(not c.ok for c in calls)
    print(f"--- canary with {name}: {canary_runs[name]['final']} | {len(calls)} requests, {failed_calls} failed")
    for entry in log:
        if entry["action"] != "wait" or entry is log[0]:
            print(f"  {entry['action']:<8} {entry['reason']}")

# %% tests="test-canary" points=4
assert canary_runs["errors"]["final"] == "rollback", (
    f"A canary that fails 30% of its requests must be rolled back, got {canary_runs['errors']['final']!r}: see decide() in section 6")
assert canary_runs["latency"]["final"] == "rollback", (
    f"A canary 40 ms slower than stable must be rolled back, got {canary_runs['latency']['final']!r}: see decide()")
assert canary_runs["healthy"]["final"] == "promote", (
    f"A healthy canary must be promoted, got {canary_runs['healthy']['final']!r}: see decide()")
assert all(entry["reason"] for run in canary_runs.values() for entry in run["log"]), (
    "Every decision must come with its reason: see decide()")
### BEGIN HIDDEN TESTS
where = "decide() in section 6"
healthy_stable = Window(400, 0, 2.0)
assert decide(healthy_stable, Window(5, 5, 2.0))[0] == "wait", f"Five failed requests are too few to judge a canary: see {where}"
assert decide(healthy_stable, Window(MIN_CANARY_REQUESTS, 0, 2.0))[0] == "wait", (
    f"A canary with the minimum of requests, all healthy, must wait until PROMOTE_AFTER: see {where}")
assert decide(healthy_stable, Window(100, 10, 2.0))[0] == "rollback", f"A 10% canary error rate must roll back: see {where}"
assert decide(healthy_stable, Window(100, 0, 60.0))[0] == "rollback", f"A canary 30 times slower must roll back: see {where}"
assert decide(healthy_stable, Window(PROMOTE_AFTER, 0, 2.5))[0] == "promote", f"A healthy canary must be promoted: see {where}"
assert decide(Window(400, 40, 2.0), Window(PROMOTE_AFTER, 12, 2.0))[0] == "promote", (
    f"A canary no worse than a failing stable is compared with stable, not with zero: see {where}")
errors_log = canary_runs["errors"]["log"]
assert errors_log[-1]["canary_requests"] >= MIN_CANARY_REQUESTS, (
    f"The rollback must wait for MIN_CANARY_REQUESTS before judging: see {where}")
assert canary_runs["healthy"]["stable_version"] == 3, "Promoting must make the canary the stable version (given code)"
assert "p95" in canary_runs["latency"]["log"][-1]["reason"], f"A latency rollback's reason must name the p95: see {where}"
### END HIDDEN TESTS

# %% [markdown] given="pipeline-text"
# ## 7. The pipeline: from a commit to production
#
# Everything above ran by hand. A CD pipeline runs it on every commit, the same way each
# time, and leaves a record. This lab ships a Dockerfile for the model server image and a
# kustomize layout (`k8s/base` and the overlays `staging` and `production`, as in lab 3).
# Write the GitHub Actions workflow `deploy.yml` with four jobs, each needing the one
# before:
#
# 1. `test`: check out, set up Python, install the locked requirements, run the tests;
# 2. `build`: only on a push to `main`, build the image and push it to the registry
#    `ghcr.io`, tagged with the commit, and output its digest;
# 3. `deploy-staging`, then 4. `deploy-production`: set the image digest in the overlay and
#    `kubectl apply -k` it; production in an **environment** named `production`, which the
#    repository's settings make wait for a reviewer's approval.
#
# Supply-chain rules, which the linters check: every action pinned to a **full commit SHA**
# (a tag can be moved to other code; a SHA cannot), `permissions: {}` at the top and only
# what each job needs (`contents: read`; `packages: write` to push), no credentials left in
# the checkout (`persist-credentials: false`), and secrets passed through `env:`, never
# pasted into a script. Two real linters check it offline: `check-jsonschema` against the
# schema of workflow files (a misspelt key fails), and `zizmor`, a static analyser for
# GitHub Actions security problems. `hadolint` checks the Dockerfile.
#
# Write the file's text as the string `WORKFLOW` in the cell below; the cell after it puts it
# at `.github/workflows/deploy.yml` in a scratch copy of the service's repository (with the
# Dockerfile and `k8s/`) and runs the linters. This machine has no network, so here are the
# commit SHAs of the releases to pin (in a real repository, Dependabot or Renovate keeps them
# current, with the tag as a comment):
#
# | action | release | commit |
# | --- | --- | --- |
# | `actions/checkout` | v4.2.2 | `11bd71901bbe5b1630ceea73d27597364c9af683` |
# | `actions/setup-python` | v5.6.0 | `a26af69be951a213d495a4c3e4e4022e16d87065` |
# | `docker/setup-buildx-action` | v3.10.0 | `b5ca514318bd6ebac0fb2aedd5d36ec1b5c232a2` |
# | `docker/login-action` | v3.4.0 | `74a5d142397b4f367a81961eba4e8cd7edddf772` |
# | `docker/build-push-action` | v6.18.0 | `263435318d21b8e681c14492fe198d362a7d2c83` |
#
# The kubeconfig comes from a repository secret `KUBECONFIG`; the image's digest is an
# output of `docker/build-push-action` (`steps.<id>.outputs.digest`), and kustomize sets it
# when the overlay lists it under `images:` (`name: payout-model`, `newName`, `digest`).

# %% solution="deploy-workflow"
### BEGIN SOLUTION
WORKFLOW = """\
name: deploy-payout-model
on:
  push:
    branches: [main]
  pull_request:
permissions: {}
concurrency:
  group: deploy-${{ github.ref }}
  cancel-in-progress: false
env:
  IMAGE: ghcr.io/${{ github.repository }}/payout-model
defaults:
  run:
    shell: bash  # named, so that GitHub runs scripts with -eo pipefail
jobs:
  test:
    runs-on: ubuntu-24.04
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - uses: actions/setup-python@a26af69be951a213d495a4c3e4e4022e16d87065 # v5.6.0
        with:
          python-version: "3.11"
      - run: pip install --require-hashes -r requirements.lock
      - run: python -m pytest -q tests
  build:
    needs: test
    if: github.event_name == 'push'
    runs-on: ubuntu-24.04
    permissions:
      contents: read
      packages: write
    outputs:
      digest: ${{ steps.push.outputs.digest }}
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - uses: docker/setup-buildx-action@b5ca514318bd6ebac0fb2aedd5d36ec1b5c232a2 # v3.10.0
      - uses: docker/login-action@74a5d142397b4f367a81961eba4e8cd7edddf772 # v3.4.0
        with:
          registry: ghcr.io
          username: ${{ github.actor }}
          password: ${{ secrets.GITHUB_TOKEN }}
      - id: push
        uses: docker/build-push-action@263435318d21b8e681c14492fe198d362a7d2c83 # v6.18.0
        with:
          context: .
          push: true
          tags: ${{ env.IMAGE }}:${{ github.sha }}
  deploy-staging:
    needs: build
    runs-on: ubuntu-24.04
    environment: staging
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - name: kubectl apply -k k8s/overlays/staging
        env:
          KUBECONFIG_DATA: ${{ secrets.KUBECONFIG }}
          DIGEST: ${{ needs.build.outputs.digest }}
        run: |
          printf '%s' "$KUBECONFIG_DATA" > "$RUNNER_TEMP/kubeconfig"
          export KUBECONFIG="$RUNNER_TEMP/kubeconfig"
          printf 'images:\\n  - name: payout-model\\n    newName: %s\\n    digest: %s\\n' "$IMAGE" "$DIGEST" \\
            >> k8s/overlays/staging/kustomization.yaml
          kubectl apply -k k8s/overlays/staging
          kubectl -n payout-staging rollout status deployment/payout-model --timeout=180s
  deploy-production:
    needs: [build, deploy-staging]
    runs-on: ubuntu-24.04
    environment: production
    permissions:
      contents: read
    steps:
      - uses: actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683 # v4.2.2
        with:
          persist-credentials: false
      - name: kubectl apply -k k8s/overlays/production
        env:
          KUBECONFIG_DATA: ${{ secrets.KUBECONFIG }}
          DIGEST: ${{ needs.build.outputs.digest }}
        run: |
          printf '%s' "$KUBECONFIG_DATA" > "$RUNNER_TEMP/kubeconfig"
          export KUBECONFIG="$RUNNER_TEMP/kubeconfig"
          printf 'images:\\n  - name: payout-model\\n    newName: %s\\n    digest: %s\\n' "$IMAGE" "$DIGEST" \\
            >> k8s/overlays/production/kustomization.yaml
          kubectl apply -k k8s/overlays/production
          kubectl -n payout-production rollout status deployment/payout-model --timeout=180s
"""
### END SOLUTION

# %% given="workflow-lint"
REPO_DIR = WORK / "repository"  # what the repository of this service would hold
shutil.copytree(LAB_DIR / "k8s", REPO_DIR / "k8s")
shutil.copy(LAB_DIR / "Dockerfile", REPO_DIR / "Dockerfile")
WORKFLOW_FILE = REPO_DIR / ".github" / "workflows" / "deploy.yml"
WORKFLOW_FILE.parent.mkdir(parents=True)
ZIZMOR_FAILS_AT = "low"  # any finding of low severity or above fails the pipeline


def lint_workflow(text: str) -> dict:
    # check-jsonschema's and zizmor's verdicts on a workflow, as plain values.
    path = WORKFLOW_FILE.with_name("candidate.yml")
    path.write_text(text)
    schema = subprocess.run([kube.tool_path("check-jsonschema"), "--builtin-schema", "vendor.github-workflows",
                             "-o", "json", str(path)], capture_output=True, text=True, timeout=120)
    audit = subprocess.run([kube.tool_path("zizmor"), "--offline", "--no-progress", "--format", "json",
                            "--min-severity", ZIZMOR_FAILS_AT, str(path)], capture_output=True, text=True, timeout=120)
    path.unlink()
    findings = json.loads(audit.stdout or "[]")
    return {"schema_ok": schema.returncode == 0, "schema_errors": schema.stdout[-2000:],
            "findings": sorted({finding["ident"] for finding in findings}), "zizmor_exit": audit.returncode}


def lint_dockerfile(path: Path) -> list[str]:
    result = subprocess.run([kube.tool_path("hadolint"), "--format", "json", str(path)],
                            capture_output=True, text=True, timeout=60)
    return [f"{problem['code']} line {problem['line']}: {problem['message']}" for problem in json.loads(result.stdout or "[]")]


WORKFLOW_FILE.write_text(WORKFLOW)
workflow_lint = lint_workflow(WORKFLOW)
dockerfile_problems = lint_dockerfile(REPO_DIR / "Dockerfile")
overlays = {env: kube.kustomize(REPO_DIR / "k8s" / "overlays" / env) for env in ("staging", "production")}
print("workflow:", workflow_lint["schema_ok"] and "schema ok" or workflow_lint["schema_errors"],
      "| zizmor findings:", workflow_lint["findings"] or "none")
print("Dockerfile:", dockerfile_problems or "hadolint clean")
print({env: sorted(f"{o['kind']}/{o['metadata']['name']}" for o in objects) for env, objects in overlays.items()})

# %% tests="test-workflow" points=4
import yaml

assert workflow_lint["schema_ok"], f"deploy.yml does not match the workflow schema: {workflow_lint['schema_errors']}: see section 7"
assert not workflow_lint["findings"], f"zizmor found {workflow_lint['findings']} in deploy.yml: see the rules in section 7"
assert not dockerfile_problems, f"hadolint found problems in the Dockerfile: {dockerfile_problems}"
parsed = yaml.safe_load(WORKFLOW)
jobs = parsed.get("jobs", {})
assert list(jobs) == ["test", "build", "deploy-staging", "deploy-production"], (
    f"deploy.yml must have the jobs test, build, deploy-staging, deploy-production in order, got {list(jobs)}: see section 7")
assert jobs["deploy-production"].get("environment") in ("production", {"name": "production"}), (
    "The production deploy must run in the environment `production`, where a reviewer approves: see section 7")
### BEGIN HIDDEN TESTS
def needs(job):
    value = jobs[job].get("needs", [])
    return [value] if isinstance(value, str) else value


assert "test" in needs("build"), "build must need test: an image is built only from tested code (section 7)"
assert "build" in needs("deploy-staging") or "build" in needs("deploy-production"), "The deploys must need build (section 7)"
assert "deploy-staging" in needs("deploy-production"), "Production must deploy after staging: see section 7"
assert parsed.get("permissions") == {}, "The workflow's top-level permissions must be `{}`, granted per job: see section 7"
assert jobs["build"].get("permissions", {}).get("packages") == "write", "build must have `packages: write` to push: see section 7"
assert all("write" not in str(jobs[j].get("permissions", {})) for j in jobs if j != "build"), (
    "Only build may write (packages): grant least privilege per job, see section 7")
assert "kubectl apply -k k8s/overlays/production" in WORKFLOW, (
    "The production deploy must apply the production overlay: see section 7")
typo = lint_workflow(WORKFLOW.replace("runs-on:", "runs_on:", 1))
assert not typo["schema_ok"], "A workflow with a misspelt key (runs_on) must fail the schema check: see lint_workflow in section 7"
unpinned = WORKFLOW.replace("actions/checkout@11bd71901bbe5b1630ceea73d27597364c9af683", "actions/checkout@v4", 1)
assert unpinned != WORKFLOW, "deploy.yml must pin actions/checkout to its full commit SHA: see section 7"
assert "unpinned-uses" in lint_workflow(unpinned)["findings"], "zizmor must flag an action pinned by tag: see section 7"
for line in WORKFLOW.splitlines():
    if "uses:" in line:
        ref = line.split("uses:", 1)[1].split("#")[0].strip().split("@")[-1]
        assert len(ref) == 40 and all(ch in "0123456789abcdef" for ch in ref), (
            f"Every action must be pinned to a full 40-character commit SHA: {line.strip()!r} (section 7)")
assert "secrets." not in "".join(step.get("run", "") for job in jobs.values() for step in job.get("steps", [])), (
    "Secrets go through env:, never into a run script: see section 7")
assert {o["kind"] for o in overlays["production"]} >= {"Deployment", "Service"}, "The production overlay must render (k8s/)"
### END HIDDEN TESTS

# %% [markdown] answer="reading-results" points=3
# **Questions.** Answer in a few sentences each.
#
# 1. Version 2 was rejected. Which checks failed, and would a gate that only compared AUC
#    have caught it? Why does calibration matter more for this product than for a ranking model?
# 2. The hot swap moved all traffic at once, the canary a fifth of it. What can the canary
#    catch that the gate cannot, and what does it cost (think of the failed requests counted above)?
# 3. The drift report flagged some features and not others. Why are the calendar features
#    left out of the trigger, and why should you distrust the KS p-values here?
#
# YOUR ANSWER HERE
#
# ### BEGIN SOLUTION
# Rubric (1 point each):
# 1. Names the failed checks printed for version 2 (calibration and/or Brier, subgroups); notes
#    that AUC alone can stay close while probabilities shift (ranking unchanged, level wrong);
#    premium = payout × probability × 1.25, so a biased probability misprices every policy.
# 2. The canary sees real traffic: runtime errors, latency under load, inputs the gate's data
#    lacks; cost: a share of users meets the faulty version until the minimum sample is
#    reached (the failed requests before the rollback), and a slower rollout.
# 3. Calendar features differ between any two seasons by construction (not a change of the
#    world); with ~50,000 rows per period any tiny difference is "significant", so the KS
#    statistic (effect size) or PSI is read, not the p-value.
# ### END SOLUTION

# %% given="cleanup"
for running in reversed(RUNNING):
    with contextlib.suppress(Exception):
        running.stop(grace=None)
shutil.rmtree(WORK, ignore_errors=True)
print("stopped", len(RUNNING), "servers and threads; removed", WORK)
