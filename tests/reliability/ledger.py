"""The client side of the fault scenarios: an HTTP client that never raises, an ingest load that retries each
batch with the same event ids until it is acknowledged, and a ledger of what was acknowledged that is checked
against the database afterwards (every acknowledged event stored exactly once, online features that add up)."""

import json
import random
import threading
import time
import urllib.error
import urllib.request
import uuid
from dataclasses import dataclass, field

from recommendations.models import EndUser, Interaction, Item, ItemFeatures, PendingFold, UserFeatures

NO_ANSWER = 0  # the status recorded when the server could not be reached or did not answer in time


def http_json(
    url: str, key: str = "", method: str = "GET", body: dict | None = None, timeout: float = 10
) -> tuple[int, dict]:
    """(status, JSON body); (NO_ANSWER, {}) when the connection failed. A non-JSON body (an HTML error page)
    is returned as {"non_json": text} so that tests can refuse it."""
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(
        url, method=method, data=data, headers={"Authorization": f"Api-Key {key}", "Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as error:
        status, raw = error.code, error.read()
    except (urllib.error.URLError, ConnectionError, TimeoutError, OSError):
        return NO_ANSWER, {}
    try:
        return status, json.loads(raw) if raw else {}
    except ValueError:
        return status, {"non_json": raw[:500].decode(errors="replace")}


@dataclass
class Attempt:
    at: float  # time.monotonic()
    status: int
    body: dict


@dataclass
class LedgerReport:
    acknowledged: int
    stored: int
    duplicates: int  # stored rows beyond the first of an event id (must be 0)
    resent: int  # acknowledged batches sent again on purpose, each answered "all duplicates"
    answers_lost: int  # batches committed whose answer the client never got: its retry found duplicates
    abandoned: int  # events whose batch was never acknowledged before the client gave up

    def __str__(self):
        return (
            f"{self.acknowledged} acknowledged, {self.stored} stored, {self.duplicates} duplicates, "
            f"{self.resent} batches re-sent on purpose, {self.answers_lost} committed batches whose answer was "
            f"lost, {self.abandoned} abandoned"
        )


@dataclass
class Ledger:
    """Event ids the server acknowledged with a 2xx, under a prefix of user and item ids of the ledger's own."""

    prefix: str
    users: int = 20
    items: int = 30
    acknowledged: dict = field(default_factory=dict)  # event_id -> the event as sent
    abandoned: list = field(default_factory=list)
    resent: int = 0
    answers_lost: int = 0
    wrong_answers: list = field(default_factory=list)  # 2xx answers whose counts contradict what was sent before

    def __post_init__(self):
        self.lock = threading.Lock()
        self.random = random.Random(self.prefix)

    def new_event(self) -> dict:
        with self.lock:  # the load's threads share one seeded generator
            user, item = self.random.randrange(self.users), self.random.randrange(self.items)
            kind = self.random.random()
        event = {
            "event_id": str(uuid.uuid4()),
            "user_id": f"{self.prefix}-u{user}",
            "item_id": f"{self.prefix}-i{item}",
        }
        if kind < 0.5:
            return {**event, "event_type": "rating", "value": float(1 + item % 5)}
        return {**event, "event_type": "click" if kind < 0.8 else "view"}

    def acknowledge(self, events: list[dict]) -> None:
        with self.lock:
            self.acknowledged.update((event["event_id"], event) for event in events)

    def report(self, cursor) -> LedgerReport:
        """Compare with the database behind `cursor` (any DB-API cursor on the server's database)."""
        cursor.execute(
            f"SELECT i.event_id, count(*) FROM {Interaction._meta.db_table} i "
            f"JOIN {EndUser._meta.db_table} u ON u.id = i.user_id WHERE u.external_id LIKE %s GROUP BY i.event_id",
            [f"{self.prefix}-%"],
        )
        counts = {str(uuid.UUID(str(event_id))): count for event_id, count in cursor.fetchall()}
        missing = [event_id for event_id in self.acknowledged if event_id not in counts]
        assert not missing, f"{len(missing)} acknowledged events are not stored, e.g. {missing[:3]}"
        return LedgerReport(
            acknowledged=len(self.acknowledged),
            stored=len(counts),
            duplicates=sum(count - 1 for count in counts.values()),
            resent=self.resent,
            answers_lost=self.answers_lost,
            abandoned=len(self.abandoned),
        )

    def assert_features_add_up(self, cursor, *, fold_wait_seconds: float = 10.0) -> None:
        """The online features of the ledger's users and items sum to what their stored events say, once no batch
        waits for the fold (a web process's sweeper folds what waits every FOLD_SWEEP_SECONDS: the contract)."""
        deadline = time.monotonic() + fold_wait_seconds
        while True:
            cursor.execute(f"SELECT count(*) FROM {PendingFold._meta.db_table}")
            if cursor.fetchone()[0] == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        interactions, users, items = Interaction._meta.db_table, EndUser._meta.db_table, Item._meta.db_table
        cursor.execute(
            f"SELECT count(*), count(*) FILTER (WHERE i.event_type = 'rating'), "
            f"coalesce(sum(i.value) FILTER (WHERE i.event_type = 'rating'), 0) FROM {interactions} i "
            f"JOIN {users} u ON u.id = i.user_id WHERE u.external_id LIKE %s",
            [f"{self.prefix}-%"],
        )
        expected = cursor.fetchone()
        for features, owner, key in ((UserFeatures, users, "user_id"), (ItemFeatures, items, "item_id")):
            cursor.execute(
                f"SELECT coalesce(sum(f.event_count), 0), coalesce(sum(f.rating_count), 0), "
                f"coalesce(sum(f.rating_sum), 0) FROM {features._meta.db_table} f "
                f"JOIN {owner} o ON o.id = f.{key} WHERE o.external_id LIKE %s",
                [f"{self.prefix}-%"],
            )
            found = cursor.fetchone()
            assert (found[0], found[1]) == (expected[0], expected[1]), (features.__name__, found, expected)
            assert abs(found[2] - expected[2]) < 1e-6, (features.__name__, found, expected)


class IngestLoad:
    """Client threads posting batches of new events; a batch that is not acknowledged (no answer, a 5xx) is sent
    again with the same event ids until it is, or until `give_up_s`. Every `resend_every`-th acknowledged batch
    is sent once more on purpose: a retry after a lost answer, which must add nothing."""

    def __init__(
        self,
        base: str,
        key: str,
        ledger: Ledger,
        *,
        threads: int = 3,
        batch: int = 4,
        resend_every: int = 5,
        give_up_s: float = 60,
    ):
        self.url, self.key, self.ledger = f"{base}/api/v1/events", key, ledger
        self.batch, self.resend_every, self.give_up_s = batch, resend_every, give_up_s
        self.attempts: list[Attempt] = []
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._run, daemon=True) for _ in range(threads)]

    def __enter__(self) -> "IngestLoad":
        for thread in self.threads:
            thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stopping.set()
        for thread in self.threads:
            thread.join(self.give_up_s + 15)

    def _run(self) -> None:
        acknowledged_batches = 0
        while not self.stopping.is_set():
            events = [self.ledger.new_event() for _ in range(self.batch)]
            body = self._send_until_acknowledged(events)
            if body is None:
                with self.ledger.lock:
                    self.ledger.abandoned.extend(events)
                continue
            # Only a retry can find duplicates: an earlier attempt was committed. A batch is all or nothing, so
            # finding some of its events but not all would mean a partial commit.
            if body.get("duplicates"):
                with self.ledger.lock:
                    self.ledger.answers_lost += 1
                    if body["duplicates"] != len(events):
                        self.ledger.wrong_answers.append(body)
            self.ledger.acknowledge(events)
            acknowledged_batches += 1
            if acknowledged_batches % self.resend_every == 0:
                again = self._send_until_acknowledged(events)
                with self.ledger.lock:
                    self.ledger.resent += 1
                    if again is not None and (again.get("accepted"), again.get("duplicates")) != (0, len(events)):
                        self.ledger.wrong_answers.append(again)

    def _send_until_acknowledged(self, events: list[dict]) -> dict | None:
        deadline = time.monotonic() + self.give_up_s
        pause = 0.05
        while time.monotonic() < deadline:
            status, body = http_json(self.url, self.key, "POST", {"events": events}, timeout=15)
            self.attempts.append(Attempt(time.monotonic(), status, body))
            if 200 <= status < 300:
                return body
            time.sleep(pause)
            pause = min(pause * 2, 0.5)
        return None

    # --- What the client saw -------------------------------------------------------------------------------
    def failures_between(self, start: float, end: float) -> list[Attempt]:
        return [a for a in self.attempts if start <= a.at <= end and not 200 <= a.status < 300]

    def first_success_after(self, moment: float) -> float | None:
        return min((a.at for a in self.attempts if a.at >= moment and 200 <= a.status < 300), default=None)

    def client_errors(self) -> list[Attempt]:
        """4xx answers: the batches are valid, so a 4xx under a fault is a wrong answer."""
        return [a for a in self.attempts if 400 <= a.status < 500]

    def html_answers(self) -> list[Attempt]:
        return [a for a in self.attempts if "non_json" in a.body]
