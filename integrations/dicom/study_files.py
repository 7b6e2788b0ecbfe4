"""Which spool files an analysis covers, for the worker that loads them.

An analysis covers exactly the instance versions recorded in `analysis_instances` when it was queued; an
instance that arrived later belongs to the next analysis version, never silently to this one. The files
come back as spool handles, not paths: a spool may keep them encrypted, and only the spool can open them.
"""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from integrations.dicom.spool import Spool, StoredObject
from integrations.store.models import Analysis, AnalysisInstance, Instance


class UnknownAnalysis(LookupError):
    pass


def study_instance_files(session: Session, analysis_id: str, spool: Spool) -> list[StoredObject]:
    """The analysis's instances in `spool`, ordered by series then arrival. Requires a known id."""
    if session.get(Analysis, analysis_id) is None:
        raise UnknownAnalysis(f"no analysis {analysis_id!r}")
    relative_paths = session.execute(
        select(Instance.spool_path)
        .join(AnalysisInstance, AnalysisInstance.instance_id == Instance.id)
        .where(AnalysisInstance.analysis_id == analysis_id)
        .order_by(Instance.series_uid, Instance.id)
    ).scalars()
    return [spool.stored(relative) for relative in relative_paths]
