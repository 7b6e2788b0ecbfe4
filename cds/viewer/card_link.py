"""The card's link to the viewer: a CDS Hooks ``smart`` link, so the EHR launches it with SMART.

The EHR appends ``iss`` and ``launch`` to ``url`` and hands ``appContext`` back to the viewer in the
token response; the report id is in both, and the viewer refuses a launch where they disagree.
"""

from __future__ import annotations

import json

from cds.cards import Link


def viewer_card_link(report_id: str, public_base_url: str) -> Link:
    """``{public_base_url}/viewer/reports/{report_id}`` as a ``smart`` link with the report in appContext."""
    return Link(
        label="Open the draft report",
        url=f"{public_base_url.rstrip('/')}/viewer/reports/{report_id}",
        type="smart",
        appContext=json.dumps({"reportId": report_id}, separators=(",", ":")),
    )
