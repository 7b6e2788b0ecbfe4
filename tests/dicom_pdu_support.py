"""Reference PDUs and command sets encoded by pynetdicom and pydicom: independent inputs for our parsers."""

from __future__ import annotations

from pydicom.dataset import Dataset
from pydicom.filebase import DicomBytesIO
from pydicom.filewriter import write_dataset
from pynetdicom.pdu import A_ASSOCIATE_RQ
from pynetdicom.pdu_primitives import A_ASSOCIATE, MaximumLengthNotification
from pynetdicom.presentation import PresentationContext
from pynetdicom.transport import AddressInformation


def pynetdicom_associate_rq(contexts: list[PresentationContext]) -> bytes:
    """A whole A-ASSOCIATE-RQ PDU (header included) from PACS to VERITRACE proposing `contexts`."""
    primitive = A_ASSOCIATE()
    primitive.application_context_name = "1.2.840.10008.3.1.1.1"
    primitive.calling_ae_title = "PACS"
    primitive.called_ae_title = "VERITRACE"
    primitive.calling_presentation_address = AddressInformation("127.0.0.1", 1)
    primitive.called_presentation_address = AddressInformation("127.0.0.1", 2)
    for number, context in enumerate(contexts):
        context.context_id = 2 * number + 1
    primitive.presentation_context_definition_list = contexts
    maximum = MaximumLengthNotification()
    maximum.maximum_length_received = 16382
    primitive.user_information = [maximum]
    request = A_ASSOCIATE_RQ()
    request.from_primitive(primitive)
    return bytes(request.encode())


def command_set(**elements: object) -> bytes:
    """A DIMSE command set with these elements, encoded as PS3.7 requires (implicit VR little endian)."""
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    buffer = DicomBytesIO()
    buffer.is_implicit_VR, buffer.is_little_endian = True, True
    write_dataset(buffer, ds)
    return buffer.getvalue()
