"""The clinician draft viewer: a SMART App Launch 2 app the EHR opens from a Veritrace card.

Mount with ``app.include_router(build_viewer_router(ViewerConfig(...), ...))``; the card links to it
through ``viewer_card_link``.
"""

from cds.viewer.card_link import viewer_card_link
from cds.viewer.config import ViewerConfig
from cds.viewer.launch_state import LaunchStore
from cds.viewer.router import build_viewer_router, security_headers

__all__ = ["LaunchStore", "ViewerConfig", "build_viewer_router", "security_headers", "viewer_card_link"]
