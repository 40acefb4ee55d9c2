"""The HTTP ports' common base: a threading server no client can hold open (deadlines,
minimum body rate, connection cap) with TLS and client authentication.  Used by the admin
port (``admin.http``) and the STOW-RS intake (``intake.stow_server``)."""

from dicom_node.web.auth import HttpSettings, admin_policy, check_exposure, dicomweb_policy
from dicom_node.web.server import (
    Access,
    ConnectionDropped,
    GuardedHandler,
    GuardedHTTPServer,
    Limits,
    PortPolicy,
)

__all__ = [
    "Access",
    "ConnectionDropped",
    "GuardedHTTPServer",
    "GuardedHandler",
    "HttpSettings",
    "Limits",
    "PortPolicy",
    "admin_policy",
    "check_exposure",
    "dicomweb_policy",
]
