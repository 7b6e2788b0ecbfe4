"""DIMSE status codes the gateway answers with, named and tagged with their PS3.4 / PS3.7 annex.

Only the codes we actually send are listed; pynetdicom's `pynetdicom.status` has the full tables.
"""

STATUS_SUCCESS = 0x0000  # PS3.7 Annex C.1.1 "Success"
# PS3.4 Annex B.2.3 (Storage Service Class) "Refused: Out of Resources"
STATUS_OUT_OF_RESOURCES = 0xA700
# PS3.4 Annex B.2.3 "Error: Data Set does not match SOP Class"
STATUS_DATASET_MISMATCH = 0xA900
# PS3.4 Annex B.2.3 "Error: Cannot understand" (0xCxxx; 0xC000 is the generic member of the range)
STATUS_CANNOT_UNDERSTAND = 0xC000
# PS3.7 Annex C.5.9 "Failure: Processing failure": the index could not be written
STATUS_PROCESSING_FAILURE = 0x0110

# PS3.8 Table 9-21 A-ASSOCIATE-RJ (result, source, reason) for a host we do not serve:
# rejected-permanent, service-user, calling-AE-title-not-recognized.
REJECT_CALLING_NOT_RECOGNISED = (0x01, 0x01, 0x03)
