"""``build_viewer_router``: the clinician draft viewer as a SMART App Launch 2 app, under ``/viewer``.

Launch (EHR: ``/launch`` or ``/reports/{id}`` with ``iss`` + ``launch``; standalone: ``/standalone``)
→ discovery → authorization code with PKCE → ``/callback`` → the report page. Every response carries
``Content-Security-Policy`` with ``frame-ancestors`` set to the allowed EHR origins, ``no-store`` and
``no-referrer``; a refused launch or request is an error page (or JSON under ``/api``) saying why,
with nothing from the record on it.
"""

from __future__ import annotations

import logging
import re
import secrets
from collections.abc import Callable, Coroutine
from datetime import UTC, datetime, timedelta
from typing import Annotated, Any
from urllib.parse import urlencode

import httpx
from anyio import to_thread
from fastapi import APIRouter, Header, Query, Request, Response
from fastapi.responses import HTMLResponse, JSONResponse, RedirectResponse
from fastapi.routing import APIRoute
from pydantic import ValidationError
from sqlalchemy.orm import Session, sessionmaker

from audit import Ledger
from cds.hook_audit import patient_ref_for
from cds.viewer.clinician_feedback import ClinicianAction, record_clinician_action
from cds.viewer.config import STANDALONE_EXTRA_SCOPES, ViewerConfig
from cds.viewer.errors import ViewerRefusal
from cds.viewer.evidence_reader import read_cited_resource
from cds.viewer.key_images import ImageSize, render_png
from cds.viewer.launch_state import LaunchStore, PendingLaunch, ViewerSession
from cds.viewer.page import render_error, render_fragment, render_page, static_file
from cds.viewer.pkce import challenge_s256, new_verifier
from cds.viewer.report_view import evidence_item, instance_path, load_report_view
from cds.viewer.smart_discovery import discover
from cds.viewer.token_exchange import exchange_code
from cds.viewer.user_identity import user_from_id_token
from integrations.dicom.spool import Spool
from integrations.store.models import Report

log = logging.getLogger(__name__)

PREFIX = "/viewer"
SESSION_HEADER = "X-Viewer-Session"
_OAUTH_ERROR = re.compile(r"^[a-z_]{1,64}$")
_REPORT_ID = re.compile(r"^[A-Za-z0-9-]{1,36}$")
SessionHandle = Annotated[str | None, Header(alias=SESSION_HEADER)]


def security_headers(frame_ancestors: tuple[str, ...]) -> dict[str, str]:
    """Headers for every viewer response: framable by the EHR origins only, nothing cached or leaked."""
    ancestors = " ".join(("'self'", *frame_ancestors))
    return {
        "Content-Security-Policy": (
            "default-src 'self'; img-src 'self' blob:; script-src 'self'; style-src 'self'; "
            f"connect-src 'self'; object-src 'none'; base-uri 'none'; form-action 'self'; "
            f"frame-ancestors {ancestors}"
        ),
        "Cache-Control": "no-store",
        "Referrer-Policy": "no-referrer",
        "X-Content-Type-Options": "nosniff",
    }


def _route_class(headers: dict[str, str]) -> type[APIRoute]:
    class ViewerRoute(APIRoute):
        """Turns ``ViewerRefusal`` into an error page / JSON and adds the security headers."""

        def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
            handler = super().get_route_handler()

            async def route(request: Request) -> Response:
                try:
                    response = await handler(request)
                except ViewerRefusal as refusal:
                    log.info("viewer refused %s: %s", request.url.path.split("/")[2:3], refusal.title)
                    if request.url.path.startswith(f"{PREFIX}/api/"):
                        response = JSONResponse(
                            {"error": refusal.title, "detail": refusal.detail}, status_code=refusal.status
                        )
                    else:
                        response = HTMLResponse(
                            render_error(refusal, base=PREFIX), status_code=refusal.status
                        )
                response.headers.update(headers)
                return response

            return route

    return ViewerRoute


def build_viewer_router(
    config: ViewerConfig,
    *,
    session_factory: sessionmaker[Session],
    ledger: Ledger,
    spool: Spool,
    launch_store: LaunchStore,
    http: httpx.AsyncClient | None = None,
) -> APIRouter:
    """The viewer's routes, to be mounted with ``app.include_router(router)`` (paths carry ``/viewer``).

    ``launch_store`` keeps launches and sessions in the shared database, so replicas can share them.
    """
    client = http or httpx.AsyncClient(timeout=config.http_timeout_s)
    store = launch_store
    router = APIRouter(
        prefix=PREFIX, tags=["viewer"], route_class=_route_class(security_headers(config.frame_ancestors))
    )

    async def start_launch(
        iss: str | None, launch: str | None, report_id: str | None, standalone: bool
    ) -> Response:
        if not iss:
            raise ViewerRefusal(400, "The launch names no EHR", "The iss parameter is missing.")
        iss = iss.rstrip("/")
        if iss not in config.allowed_issuers:
            raise ViewerRefusal(
                403, "This EHR may not launch the viewer", "The iss is not an allowed FHIR server."
            )
        if not standalone and not launch:
            raise ViewerRefusal(400, "The launch is incomplete", "The launch parameter is missing.")
        if report_id is not None and not _REPORT_ID.match(report_id):
            raise ViewerRefusal(400, "The draft id is malformed", "Open the draft again from the EHR.")
        smart = await discover(client, iss)
        verifier, state = new_verifier(), secrets.token_urlsafe(32)
        pending = PendingLaunch(
            state=state,
            iss=iss,
            launch=launch,
            report_id=report_id,
            code_verifier=verifier,
            authorization_endpoint=smart.authorization_endpoint,
            token_endpoint=smart.token_endpoint,
            auth_server_issuer=smart.issuer,
            jwks_uri=getattr(smart, "jwks_uri", None),
        )
        await to_thread.run_sync(store.put_pending, pending)
        scopes = (
            [s for s in config.scopes if s != "launch"] + list(STANDALONE_EXTRA_SCOPES)
            if standalone
            else list(config.scopes)
        )
        params = {
            "response_type": "code",
            "client_id": config.client_id,
            "redirect_uri": config.redirect_uri,
            "scope": " ".join(scopes),
            "state": state,
            "aud": iss,
            "code_challenge": challenge_s256(verifier),
            "code_challenge_method": "S256",
            **({"launch": launch} if launch else {}),
        }
        return RedirectResponse(f"{smart.authorization_endpoint}?{urlencode(params)}", status_code=302)

    @router.get("/launch", summary="SMART EHR launch (the draft named by appContext)")
    async def ehr_launch(iss: str | None = None, launch: str | None = None) -> Response:
        return await start_launch(iss, launch, None, standalone=False)

    @router.get("/reports/{report_id}", summary="SMART EHR launch of one draft (the card's link)")
    async def ehr_launch_report(
        report_id: str, iss: str | None = None, launch: str | None = None
    ) -> Response:
        return await start_launch(iss, launch, report_id, standalone=False)

    @router.get("/standalone", summary="SMART standalone launch: the EHR's patient picker chooses")
    async def standalone_launch(report: str, iss: str | None = None) -> Response:
        return await start_launch(iss or config.allowed_issuers[0], None, report, standalone=True)

    @router.get("/callback", summary="OAuth 2 redirect URI: code + state → session → the report page")
    async def callback(
        code: str | None = None, state: str | None = None, error: str | None = None, iss: str | None = None
    ) -> Response:
        if error is not None:
            shown = error if _OAUTH_ERROR.match(error) else "invalid"
            raise ViewerRefusal(401, "The EHR did not authorise the viewer", f"Authorization error: {shown}.")
        if not code or not state:
            raise ViewerRefusal(400, "The sign-in answer is incomplete", "code or state is missing.")
        pending = await to_thread.run_sync(store.take_pending, state)
        if pending is None:
            raise ViewerRefusal(
                400, "Unknown or expired launch", "The state does not match a launch in progress."
            )
        if not pending.code_verifier:
            raise ViewerRefusal(
                400, "The launch lost its PKCE verifier", "The code cannot be redeemed safely."
            )
        if iss is not None and pending.auth_server_issuer is not None and iss != pending.auth_server_issuer:
            raise ViewerRefusal(
                400, "The answer came from another server", "The iss does not match the EHR's."
            )
        token = await exchange_code(
            client,
            token_endpoint=pending.token_endpoint,
            code=code,
            code_verifier=pending.code_verifier,
            redirect_uri=config.redirect_uri,
            client_id=config.client_id,
            client_secret=config.client_secret.get_secret_value(),
        )
        context: dict[str, Any] = token.app_context()
        named = context.get("reportId")
        if pending.report_id and named and named != pending.report_id:
            raise ViewerRefusal(403, "The launch context does not match the link", "Nothing is shown.")
        report_id = pending.report_id or (str(named) if named else None)
        if not report_id:
            raise ViewerRefusal(400, "The launch names no draft", "appContext has no reportId.")
        with session_factory() as db:
            report = db.get(Report, report_id)
            if report is None:
                raise ViewerRefusal(404, "The draft was not found", "It may have been superseded.")
            if report.patient_id != token.patient:
                raise ViewerRefusal(
                    403,
                    "This draft is about another patient",
                    "The EHR's launch context names a different patient. Nothing is shown.",
                )
        user = None
        if token.id_token and pending.jwks_uri and pending.auth_server_issuer:
            user = await to_thread.run_sync(
                lambda: user_from_id_token(
                    token.id_token or "",
                    jwks_uri=pending.jwks_uri or "",
                    issuer=pending.auth_server_issuer or "",
                    client_id=config.client_id,
                )
            )
        lifetime = min(config.session_ttl_s, float(token.expires_in or config.session_ttl_s))
        session = ViewerSession(
            handle=store.new_handle(),
            iss=pending.iss,
            access_token=token.access_token,
            patient_id=token.patient,
            encounter_id=token.encounter,
            user=user,
            scopes=tuple(token.scope.split()),
            report_id=report_id,
            card_uuid=str(context["cardUuid"]) if context.get("cardUuid") else None,
            expires_at=datetime.now(UTC) + timedelta(seconds=lifetime),
        )
        await to_thread.run_sync(store.put_session, session)

        def opened() -> str:
            ledger.append(
                "viewer.opened",
                f"smart-user:{user or 'unknown'}",
                {
                    "reportId": report_id,
                    "launch": "ehr" if pending.launch else "standalone",
                    "iss": pending.iss,
                },
                patient_ref=patient_ref_for(token.patient),
            )
            with session_factory() as db:
                view = load_report_view(db, ledger, report_id=report_id, card_uuid=session.card_uuid)
            assert view is not None
            return render_page(view, base=PREFIX, handle=session.handle)

        return HTMLResponse(await to_thread.run_sync(opened))

    async def current_session(handle: str | None) -> ViewerSession:
        session = await to_thread.run_sync(store.get_session, handle) if handle else None
        if session is None:
            raise ViewerRefusal(401, "No viewer session", "Open the draft again from the EHR.")
        return session

    @router.get("/app", summary="The page after a reload: loads the report with the stored handle")
    async def app_shell() -> Response:
        return HTMLResponse(render_page(None, base=PREFIX))

    @router.get("/api/page", summary="The report as an HTML fragment")
    async def page_fragment(x_viewer_session: SessionHandle = None) -> Response:
        session = await current_session(x_viewer_session)

        def render() -> str:
            with session_factory() as db:
                view = load_report_view(db, ledger, report_id=session.report_id, card_uuid=session.card_uuid)
            if view is None:
                raise ViewerRefusal(404, "The draft was not found", "It may have been removed.")
            return render_fragment(view, base=PREFIX)

        return HTMLResponse(await to_thread.run_sync(render))

    @router.get(
        "/api/evidence/{citation_id}", summary="A cited FHIR resource, read with the clinician's token"
    )
    async def evidence(citation_id: str, x_viewer_session: SessionHandle = None) -> dict[str, Any]:
        session = await current_session(x_viewer_session)

        def find() -> dict[str, Any] | None:
            with session_factory() as db:
                return evidence_item(db, report_id=session.report_id, citation_id=citation_id)

        item = await to_thread.run_sync(find)
        if item is None:
            raise ViewerRefusal(404, "The citation is not in the trace", "Nothing to open.")
        return (await read_cited_resource(client, session, item)).model_dump()

    @router.get("/api/images/{instance_id}", summary="A key image as windowed PNG")
    async def image(
        instance_id: int,
        frame: Annotated[int, Query(ge=0, le=10_000)] = 0,
        preset: str = "default",
        size: ImageSize = "thumb",
        x_viewer_session: SessionHandle = None,
    ) -> Response:
        session = await current_session(x_viewer_session)

        def render() -> bytes:
            with session_factory() as db:
                relative = instance_path(db, report_id=session.report_id, instance_id=instance_id)
            if relative is None:
                raise ViewerRefusal(404, "Image not found", "It is not part of this draft's study.")
            return render_png(spool, relative, frame=frame, preset=preset, size=size)

        return Response(await to_thread.run_sync(render), media_type="image/png")

    @router.post("/api/feedback", summary="Accept or override the draft: CDS feedback + ledger entry")
    async def feedback(request: Request, x_viewer_session: SessionHandle = None) -> dict[str, Any]:
        session = await current_session(x_viewer_session)
        try:
            action = ClinicianAction.model_validate_json(await request.body())
        except ValidationError as exc:
            first = exc.errors()[0].get("msg", "invalid request") if exc.errors() else "invalid request"
            raise ViewerRefusal(400, "The decision is incomplete", str(first)) from exc

        def store_action() -> str:
            with session_factory() as db:
                view = load_report_view(db, ledger, report_id=session.report_id, card_uuid=session.card_uuid)
                if view is None or view.card_uuid is None:
                    raise ViewerRefusal(409, "No card to give feedback on", "Nothing was recorded.")
                recorded = record_clinician_action(
                    db,
                    ledger,
                    session=session,
                    card_uuid=view.card_uuid,
                    reasons=view.override_reasons,
                    action=action,
                )
            return recorded.outcome

        outcome = await to_thread.run_sync(store_action)
        message = (
            "Accepted. Recorded as feedback on the card."
            if outcome == "accepted"
            else ("Overridden. Recorded as feedback on the card.")
        )
        return {"outcome": outcome, "message": message}

    @router.get("/static/{name}", include_in_schema=False)
    async def static(name: str) -> Response:
        types = {"viewer.js": "text/javascript", "viewer.css": "text/css"}
        if name not in types:
            raise ViewerRefusal(404, "Not found", "No such file.")
        return Response(static_file(name), media_type=f"{types[name]}; charset=utf-8")

    return router
