"""The ratings store: one SQLite file, one row per judgement, written before the page moves on.

Every answer is committed (WAL journal, `synchronous=FULL`) before the server replies, so killing
the server loses no judgement already answered. A pair of runs and an item are judged at most
once per rater (a UNIQUE constraint, so a double submit or a second tab cannot add a second row).
What a rater is being shown is an `offer` row: a reload shows the same one again rather than
skipping it, and it survives a restart of the server.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import astuple, dataclass
from datetime import UTC, datetime
from pathlib import Path

from train.errors import UserError

APPLICATION_ID = 0x67656E72  # "genr": tells a ratings store from any other SQLite file
SCHEMA_VERSION = 1
CHOICES = ("left", "right", "tie")
SCHEMA = f"""
CREATE TABLE judgements (
    id INTEGER PRIMARY KEY,
    rater TEXT NOT NULL,
    time TEXT NOT NULL,         -- when the answer came (UTC, ISO 8601)
    shown TEXT NOT NULL,        -- when the page showing the pair was served
    left_run TEXT NOT NULL,     -- the run (resolved workdir) shown on the left
    right_run TEXT NOT NULL,
    item TEXT NOT NULL,         -- image:KIND, prompt:PROMPT or source:SENTENCE
    left_file TEXT NOT NULL,    -- the sample file each side came from
    right_file TEXT NOT NULL,
    choice TEXT NOT NULL CHECK (choice IN {CHOICES}),
    pair TEXT NOT NULL,         -- both runs, sorted, joined by a newline
    UNIQUE (rater, pair, item)
);
CREATE TABLE offers (
    id TEXT PRIMARY KEY,
    rater TEXT NOT NULL,
    shown TEXT NOT NULL,
    left_run TEXT NOT NULL,
    right_run TEXT NOT NULL,
    item TEXT NOT NULL,
    left_file TEXT NOT NULL,
    right_file TEXT NOT NULL
);
"""
COLUMNS = {
    "judgements": (
        "id", "rater", "time", "shown", "left_run", "right_run", "item", "left_file",
        "right_file", "choice", "pair",
    ),
    "offers": (
        "id", "rater", "shown", "left_run", "right_run", "item", "left_file", "right_file"
    ),
}  # fmt: skip


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="milliseconds")


def pair_key(a: str, b: str) -> str:
    return "\n".join(sorted((a, b)))


@dataclass(frozen=True)
class Offer:
    """A pair shown to a rater and not answered yet."""

    id: str
    rater: str
    shown: str
    left_run: str
    right_run: str
    item: str
    left_file: str
    right_file: str


@dataclass(frozen=True)
class Judgement:
    rater: str
    left_run: str
    right_run: str
    item: str
    choice: str


class Store:
    """A ratings store at `path`, checked (or created) when opened; a file that is not one is a
    UserError naming it."""

    def __init__(self, path: Path, create: bool = True, flag: str = "--store"):
        self.path, self.flag = Path(path), flag
        if self.path.is_dir():
            raise UserError(f"{flag} {path}: is a folder; give a file (e.g. ratings.sqlite)")
        if not self.path.exists() and not create:
            raise UserError(f"{flag} {path}: no such file")
        if not self.path.parent.is_dir():
            raise UserError(f"{flag} {path}: no such folder {self.path.parent}")
        with self._errors(), self.connect() as db:
            self._check_or_create(db)

    @contextmanager
    def _errors(self) -> Iterator[None]:
        try:
            yield
        except sqlite3.DatabaseError as error:
            message = f"{self.flag} {self.path}: not a usable ratings store ({error})"
            raise UserError(message) from None

    @contextmanager
    def connect(self) -> Iterator[sqlite3.Connection]:
        """A connection in autocommit mode (transactions are explicit), closed afterwards."""
        db = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        try:
            db.execute("PRAGMA synchronous=FULL")
            yield db
        finally:
            db.close()

    def _check_or_create(self, db: sqlite3.Connection) -> None:
        db.execute("PRAGMA quick_check").fetchall()  # a damaged file fails here, not mid-rating
        application = db.execute("PRAGMA application_id").fetchone()[0]
        version = db.execute("PRAGMA user_version").fetchone()[0]
        tables = [r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")]
        if application == 0 and not tables:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(
                f"BEGIN; {SCHEMA} PRAGMA application_id={APPLICATION_ID}; "
                f"PRAGMA user_version={SCHEMA_VERSION}; COMMIT;"
            )
            return
        if application != APPLICATION_ID:
            raise UserError(
                f"{self.flag} {self.path}: a SQLite file but not a genlab ratings store "
                f"(tables: {', '.join(sorted(tables)) or 'none'})"
            )
        if version != SCHEMA_VERSION:
            raise UserError(
                f"{self.flag} {self.path}: ratings store schema {version}; this genlab reads "
                f"schema {SCHEMA_VERSION}"
            )
        for table, expected in COLUMNS.items():
            found = tuple(r[1] for r in db.execute(f"PRAGMA table_info({table})"))
            if found != expected:
                raise UserError(
                    f"{self.flag} {self.path}: table {table!r} has columns "
                    f"{', '.join(found) or '(missing)'}; expected {', '.join(expected)}"
                )

    # -- what the rating page needs ---------------------------------------------------------
    def judged(self, rater: str) -> set[tuple[str, str]]:
        """The (pair, item)s this rater has answered."""
        with self._errors(), self.connect() as db:
            rows = db.execute("SELECT pair, item FROM judgements WHERE rater = ?", (rater,))
            return {(pair, item) for pair, item in rows}

    def pending(self, rater: str) -> list[Offer]:
        with self._errors(), self.connect() as db:
            rows = db.execute("SELECT * FROM offers WHERE rater = ? ORDER BY shown", (rater,))
            return [Offer(*row) for row in rows]

    def offer(self, offer_id: str) -> Offer | None:
        with self._errors(), self.connect() as db:
            row = db.execute("SELECT * FROM offers WHERE id = ?", (offer_id,)).fetchone()
            return Offer(*row) if row else None

    def add_offer(self, offer: Offer) -> None:
        with self._errors(), self.connect() as db:
            db.execute("INSERT INTO offers VALUES (?, ?, ?, ?, ?, ?, ?, ?)", astuple(offer))

    def drop_offer(self, offer_id: str) -> None:
        with self._errors(), self.connect() as db:
            db.execute("DELETE FROM offers WHERE id = ?", (offer_id,))

    def answer(self, offer_id: str, choice: str) -> bool:
        """Record the answer to an offer as one judgement, committed before returning; False
        when the offer is unknown or was answered already (nothing is written then)."""
        if choice not in CHOICES:
            raise ValueError(f"choice {choice!r}; allowed: {', '.join(CHOICES)}")
        with self._errors(), self.connect() as db:
            db.execute("BEGIN IMMEDIATE")
            try:
                row = db.execute("SELECT * FROM offers WHERE id = ?", (offer_id,)).fetchone()
                added = 0
                if row:
                    o = Offer(*row)
                    added = db.execute(
                        "INSERT OR IGNORE INTO judgements (rater, time, shown, left_run, "
                        "right_run, item, left_file, right_file, choice, pair) "
                        "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                        (o.rater, now(), o.shown, o.left_run, o.right_run, o.item, o.left_file,
                         o.right_file, choice, pair_key(o.left_run, o.right_run)),
                    ).rowcount  # fmt: skip
                    db.execute("DELETE FROM offers WHERE id = ?", (offer_id,))
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return bool(added)

    def count(self, rater: str | None = None) -> int:
        with self._errors(), self.connect() as db:
            if rater is None:
                return db.execute("SELECT COUNT(*) FROM judgements").fetchone()[0]
            query = "SELECT COUNT(*) FROM judgements WHERE rater = ?"
            return db.execute(query, (rater,)).fetchone()[0]

    # -- what `genlab compare --ratings` needs -----------------------------------------------
    def judgements(self) -> list[Judgement]:
        with self._errors(), self.connect() as db:
            rows = db.execute(
                "SELECT rater, left_run, right_run, item, choice FROM judgements ORDER BY id"
            )
            return [Judgement(*row) for row in rows]
