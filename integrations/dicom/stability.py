"""Stable-study assembly: a study quiet for `stable_age` seconds becomes one queued analysis.

All state is in the database (study.state, study.instance_count, analyses, analysis_instances), so a
restarted process resumes half-assembled studies where they were, and two tracker processes cannot both
settle the same study: the settle is an optimistic UPDATE on (state, instance_count) that only one wins.
The analysis row is committed before `enqueue` is called, and `requeue_pending` re-sends analyses still
"queued" after a crash between the two; the task is idempotent, so a double enqueue is harmless.

The SCP acknowledges an instance before its index row is committed (`batched_indexer`), and the quiet
period counts from the commit. `held_studies` names the studies this process has acknowledged instances
of that are not committed yet (a database outage can hold them for longer than `stable_age`): those are
not settled until their rows are in. A late commit of a study settled elsewhere reopens it, as any late
instance does.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from integrations.dicom.audit_port import AuditLedger
from integrations.dicom.config import RoutingRules
from integrations.store.ingest import STUDY_IGNORED, STUDY_RECEIVING, STUDY_STABLE
from integrations.store.models import Analysis, AnalysisInstance, Instance, Study

LOG = logging.getLogger(__name__)
ACTOR = "dicom-stability"


def content_digest(instance_digests: Iterable[str]) -> str:
    """SHA-256 over the sorted instance digests, one per line: the analysis idempotency key."""
    return hashlib.sha256("\n".join(sorted(instance_digests)).encode("ascii")).hexdigest()


def _aware(moment: datetime) -> datetime:
    # SQLite hands back naive datetimes; everything we write is UTC.
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class StableStudyTracker:
    def __init__(
        self,
        session_factory: Callable[[], Session],
        ledger: AuditLedger,
        stable_age_s: float,
        enqueue: Callable[[str], None],
        *,
        stable_age_by_calling_aet: dict[str, float] | None = None,
        routing: RoutingRules | None = None,
        held_studies: Callable[[], frozenset[str]] | None = None,
    ) -> None:
        if stable_age_s < 0:
            raise ValueError(f"stable_age_s must be >= 0, got {stable_age_s}")
        self._session_factory = session_factory
        self._ledger = ledger
        self._stable_age_s = stable_age_s
        self._by_aet = dict(stable_age_by_calling_aet or {})
        self._enqueue = enqueue
        self._routing = routing or RoutingRules()
        self._held_studies = held_studies or frozenset

    def _age_for(self, calling_ae: str | None) -> float:
        if calling_ae is not None and calling_ae in self._by_aet:
            return self._by_aet[calling_ae]
        return self._stable_age_s

    def poll_once(self, now: datetime | None = None) -> list[str]:
        """Settle every study quiet long enough; returns the ids of analyses queued by this call."""
        now = now or datetime.now(UTC)
        shortest = min([self._stable_age_s, *self._by_aet.values()])
        with self._session_factory() as session:
            candidates = session.execute(
                select(
                    Study.id, Study.study_uid, Study.calling_ae, Study.last_received_at, Study.instance_count
                ).where(
                    Study.state == STUDY_RECEIVING,
                    Study.last_received_at <= now - timedelta(seconds=shortest),
                )
            ).all()
        queued: list[str] = []
        held = self._held_studies() if candidates else frozenset()
        for study_id, study_uid, calling_ae, last_received_at, instance_count in candidates:
            if study_uid in held:
                continue
            if now - _aware(last_received_at) < timedelta(seconds=self._age_for(calling_ae)):
                continue
            analysis_id = self._settle(study_id, instance_count)
            if analysis_id is not None:
                queued.append(analysis_id)
        return queued

    def _settle(self, study_id: int, seen_count: int) -> str | None:
        with self._session_factory() as session, session.begin():
            study = session.get(Study, study_id)
            if study is None:
                return None
            rows = session.execute(
                select(
                    Instance.id,
                    Instance.sha256,
                    Instance.modality,
                    Instance.sop_class_uid,
                    Instance.body_part,
                ).where(Instance.study_id == study_id)
            ).all()
            routed = [
                row for row in rows if self._routing.selects(row.modality, row.sop_class_uid, row.body_part)
            ]
            new_state = STUDY_STABLE if routed else STUDY_IGNORED
            won = session.execute(  # type: ignore[attr-defined]  # UPDATE results are CursorResults
                update(Study)
                .where(
                    Study.id == study_id, Study.state == STUDY_RECEIVING, Study.instance_count == seen_count
                )
                .values(state=new_state)
            ).rowcount
            if won != 1:
                return None  # another instance arrived, or another tracker settled it
            patient_ref, study_uid = study.patient_id, study.study_uid
            digest = content_digest(row.sha256 for row in routed)
            analysis_id: str | None = None
            version = 0
            if routed:
                already = session.execute(
                    select(Analysis.id).where(
                        Analysis.study_id == study_id, Analysis.content_digest == digest
                    )
                ).scalar_one_or_none()
                if already is None:
                    previous = session.execute(
                        select(func.max(Analysis.version)).where(Analysis.study_id == study_id)
                    ).scalar_one_or_none()
                    version = (previous or 0) + 1
                    analysis = Analysis(
                        study_id=study_id, content_digest=digest, version=version, status="queued"
                    )
                    session.add(analysis)
                    session.flush()
                    analysis_id = analysis.id
                    session.add_all(
                        AnalysisInstance(analysis_id=analysis.id, instance_id=row.id) for row in routed
                    )
        self._ledger.append(
            "study.stable",
            ACTOR,
            {
                "instance_count": len(rows),
                "routed_count": len(routed),
                "state": new_state,
                "content_digest": digest if routed else None,
            },
            patient_ref=patient_ref,
            study_uid=study_uid,
        )
        if analysis_id is None:
            return None
        self._ledger.append(
            "analysis.queued",
            ACTOR,
            {"analysis_id": analysis_id, "version": version, "content_digest": digest},
            patient_ref=patient_ref,
            study_uid=study_uid,
        )
        self._try_enqueue(analysis_id)
        return analysis_id

    def _try_enqueue(self, analysis_id: str) -> bool:
        try:
            self._enqueue(analysis_id)
        except Exception:
            # Committed as "queued": requeue_pending sends it at the next start.
            LOG.exception("enqueue failed for analysis %s; it stays queued", analysis_id)
            return False
        return True

    def requeue_pending(self) -> list[str]:
        """Enqueue again every analysis still "queued" (after a crash between commit and enqueue)."""
        with self._session_factory() as session:
            pending = list(
                session.execute(
                    select(Analysis.id).where(Analysis.status == "queued").order_by(Analysis.queued_at)
                ).scalars()
            )
        return [analysis_id for analysis_id in pending if self._try_enqueue(analysis_id)]

    def run(self, stop_event: threading.Event, interval_s: float = 0.5) -> None:
        """Poll until `stop_event` is set; errors are logged and the loop goes on (for a daemon thread)."""
        while not stop_event.is_set():
            try:
                self.poll_once()
            except Exception:
                LOG.exception("stable-study poll failed; retrying")
            stop_event.wait(interval_s)
