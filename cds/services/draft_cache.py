"""A patient's current draft reports, remembered for a second: ``patient-view`` fires on every chart
open, and an EHR opening one chart in several views (or several clinicians opening it) asks for the same
drafts many times a second. The query and the ORM objects it builds were a large share of a hook call.

Why a short TTL is safe here: drafts change when an analysis finishes or a newer one replaces it, at
most a few times a day per patient; a new draft shows at most ``ttl_s`` later. The check that matters
for safety, whether a final human report has overtaken a draft, reads the prefetch sent with each call
and is never cached. The reports handed out are detached, read-only snapshots shared between calls;
card builders must not change them.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from weakref import WeakKeyDictionary

from sqlalchemy.orm import Session, sessionmaker

from cds.services.draft_reports import current_drafts
from integrations.store.models import Report

DEFAULT_TTL_S = 1.0
DEFAULT_MAX_PATIENTS = 10_000


class DraftReportCache:
    """``current_drafts`` per patient, each kept ``ttl_s`` seconds; thread-safe, bounded (LRU)."""

    def __init__(
        self,
        session_factory: sessionmaker[Session],
        *,
        ttl_s: float = DEFAULT_TTL_S,
        max_patients: int = DEFAULT_MAX_PATIENTS,
    ) -> None:
        if ttl_s < 0:
            raise ValueError(f"ttl_s must be >= 0, got {ttl_s}")
        if max_patients < 1:
            raise ValueError(f"max_patients must be >= 1, got {max_patients}")
        self._session_factory = session_factory
        self.ttl_s = ttl_s
        self.max_patients = max_patients
        self._entries: OrderedDict[str, tuple[float, tuple[Report, ...]]] = OrderedDict()
        self._lock = threading.Lock()
        self._loading: dict[str, threading.Event] = {}
        self.misses = 0
        """Queries made (for tests and the benchmark)."""

    def drafts(self, patient_id: str) -> tuple[Report, ...]:
        """The patient's current drafts, newest first, as of at most ``ttl_s`` seconds ago.

        One query per patient at a time: calls that find the entry expired while another call is
        reading it get the previous list (older by at most that one query), and calls with no entry
        yet wait for it, so an expiry under load is one query, not one per waiting call.
        """
        now = time.monotonic()
        with self._lock:
            entry = self._entries.get(patient_id)
            if entry is not None and now - entry[0] < self.ttl_s:
                self._entries.move_to_end(patient_id)
                return entry[1]
            loading = self._loading.get(patient_id)
            if loading is None:
                loading = self._loading[patient_id] = threading.Event()
                loader = True
            else:
                loader = False
        if not loader:
            if entry is not None:
                return entry[1]
            loading.wait()
            with self._lock:
                entry = self._entries.get(patient_id)
            if entry is not None:
                return entry[1]
            # The loading call failed: read for ourselves (and fail the same way if the database does).
        try:
            with self._session_factory() as session:
                found = tuple(current_drafts(session, patient_id=patient_id))
            with self._lock:
                self.misses += 1
                self._entries[patient_id] = (now, found)
                self._entries.move_to_end(patient_id)
                while len(self._entries) > self.max_patients:
                    self._entries.popitem(last=False)
            return found
        finally:
            if loader:
                with self._lock:
                    self._loading.pop(patient_id, None)
                loading.set()

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()


_BY_FACTORY: WeakKeyDictionary[sessionmaker[Session], DraftReportCache] = WeakKeyDictionary()
_BY_FACTORY_LOCK = threading.Lock()


def draft_cache_for(session_factory: sessionmaker[Session]) -> DraftReportCache:
    """The cache of one session factory: apps built on the same factory (replicas in tests) share it."""
    with _BY_FACTORY_LOCK:
        cache = _BY_FACTORY.get(session_factory)
        if cache is None:
            cache = _BY_FACTORY[session_factory] = DraftReportCache(session_factory)
        return cache
