"""The two ASGI apps the CDS Hooks benchmark serves with uvicorn (``--factory``).

``veritrace_app`` is the real ``create_app`` on the database, issuers file and home directory named by
``VT_BENCH_DATABASE_URL`` / ``VT_BENCH_ISSUERS_FILE`` / ``VT_BENCH_HOME`` / ``VT_BENCH_PUBLIC_URL``;
``bare_app`` is the baseline the issue asks for: a FastAPI endpoint returning one fixed card.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

from fastapi import FastAPI

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FIXED = {
    "cards": [
        {
            "uuid": "8f0e7c2a-8d8e-4a55-9a43-2f3e5f6a7b8c",
            "summary": "AI draft (moderate): Right lower lobe nodule 8 mm",
            "indicator": "warning",
            "source": {"label": "Veritrace AI draft report"},
            "links": [
                {
                    "label": "Open the draft report",
                    "url": "http://127.0.0.1/viewer/reports/x",
                    "type": "absolute",
                }
            ],
        }
    ]
}


def bare_app() -> FastAPI:
    app = FastAPI()

    @app.post("/cds-services/{service_id}")
    async def fixed_card(service_id: str) -> dict[str, Any]:
        return FIXED

    return app


def veritrace_app() -> FastAPI:
    from audit import Ledger
    from cds.app import create_app
    from cds.settings import Settings
    from integrations.store.engine import make_engine, make_session_factory

    settings = Settings(
        home=Path(os.environ["VT_BENCH_HOME"]),
        database_url=os.environ["VT_BENCH_DATABASE_URL"],
        cds_issuers_file=Path(os.environ["VT_BENCH_ISSUERS_FILE"]),
        public_base_url=os.environ["VT_BENCH_PUBLIC_URL"],
    )
    engine = make_engine(settings.store_config())
    return create_app(
        settings,
        session_factory=make_session_factory(engine),
        ledger=Ledger(engine, settings.ledger_config()),
    )
