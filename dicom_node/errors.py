"""Every error the node raises on purpose, and the DICOM statuses it answers with.

The tree::

    NodeError
    ├── ConfigError            a setting is invalid (the message names it); stops the start
    │   └── SchemaError        the job log's schema is missing, behind or unknown [joblog.migrate]
    ├── InstanceRejected       a received data set is refused; carries its C-STORE status
    │   └── JobLogUnavailable  the job log is locked or unreachable (0xA700) [intake.filing]
    ├── IntakeRefused          a connection or request is refused before anything is filed
    │   ├── Refused            an association: dropped, or A-ASSOCIATE-RJ [intake.admission]
    │   └── RequestRefused     a STOW-RS request: an HTTP error status [intake.stow_server]
    ├── PipelineError          an analysis failed                    -> job ``failed``
    │   ├── NotAnalysable      valid DICOM this pipeline does not analyse -> job ``ignored``
    │   │   └── SeriesRejected one CT series is unusable (others may still be)
    │   ├── PreprocessingError an image cannot be decoded or prepared for a model
    │   └── GradCamError       the model has no usable layer for Grad-CAM
    ├── ModelStoreError        a model artefact is missing, incomplete or fails its checksum
    ├── OutputError            a finding does not fit its sources (a bug)    -> job ``failed``
    ├── SendError              a result could not be delivered (one attempt)
    ├── InvalidTransition      a job state change the state machine forbids (a bug) [joblog.schema]
    └── ClassifyError          ``dicom-node classify`` cannot read its input

A class marked ``[module]`` is defined in that module, beside the code that raises it.  They
are mapped to DICOM statuses and job states only at the boundaries: the filing of a received
instance (``intake.filing``, for C-STORE and STOW-RS), the ``worker`` and the sender
(``delivery.cstore_client``, ``delivery.sender``).  Messages never hold patient data: they
name instances by UID, attributes by keyword and the step that failed.  This module imports
nothing of ours.
"""

from __future__ import annotations

from enum import IntEnum


class DicomStatus(IntEnum):
    """The C-STORE / C-ECHO statuses the node answers with (PS3.4 B.2.3, PS3.7 C.4.2)."""

    SUCCESS = 0x0000
    OUT_OF_RESOURCES = 0xA700  # refused: not enough disk space (or the disk failed us)
    DATASET_DOES_NOT_MATCH_SOP_CLASS = 0xA900  # refused: required attributes missing/invalid
    CANNOT_UNDERSTAND = 0xC000  # refused: the data set cannot be parsed or its pixels are cut
    # STOW-RS only (PS3.18 Table 10.5.3-2): a SOP Class or Transfer Syntax the node does not
    # take; over DIMSE, presentation-context negotiation refuses these instead.
    SOP_CLASS_NOT_SUPPORTED = 0x0122


class NodeError(Exception):
    """Base of every error the node raises on purpose."""


class ConfigError(NodeError, ValueError):
    """A setting is invalid; the message names it."""


class InstanceRejected(NodeError):
    """A data set we refuse, with the DICOM status to answer."""

    def __init__(self, status: DicomStatus, reason: str) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason


class IntakeRefused(NodeError):
    """A whole connection or request is refused before any instance is filed; the subclasses
    carry how it is answered (an A-ASSOCIATE-RJ, an HTTP status)."""


class PipelineError(NodeError):
    """The analysis failed; the message is shown in the job log (no patient data)."""


class NotAnalysable(PipelineError):
    """The study is valid DICOM but not something this pipeline analyses (a single CT slice,
    a non-axial series, no lungs in view): the job is ``ignored`` with this reason, since a
    retry cannot change the outcome."""


class SeriesRejected(NotAnalysable):
    """One CT series cannot be analysed; the reason names why."""


class PreprocessingError(PipelineError, ValueError):
    """The file or dataset is not an image this node can analyse (message is user-facing)."""


class GradCamError(PipelineError, ValueError):
    """No usable layer for Grad-CAM."""


class ModelStoreError(NodeError):
    """A model artefact is missing, incomplete or fails its checksum."""


class OutputError(NodeError, ValueError):
    """A finding cannot be made into result objects (it does not match its sources): a bug."""


class SendError(NodeError):
    """One delivery attempt failed; ``status`` is the peer's DICOM status when it answered."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class ClassifyError(NodeError):
    """``dicom-node classify`` cannot read its input."""
