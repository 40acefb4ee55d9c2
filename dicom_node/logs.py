"""Logging setup: one line per event, bounded, no patient data.

Our own log lines never contain patient names or IDs (only UIDs, AE titles, counts), and
values that come from a data set go through :func:`clean` (control characters escaped,
length bounded) so a hostile value cannot forge log lines or flood the log; messages that may
span lines (job-log reasons) go through :func:`one_line`.  As a last line
of defence every record is flattened to one line of at most ``MAX_LINE`` characters.
pynetdicom's debug output can dump whole datasets, so it (and highdicom's chatter) is kept at
WARNING unless the admin sets ``log_patient_data`` together with ``log_level = DEBUG``.
pydicom's warnings quote attribute values (a malformed PatientName, say), so they are kept
out of the operational log.  pynetdicom's warnings quote values from the request too (an
invalid Affected SOP Instance UID can carry anything, a patient ID included) and its errors
come with tracebacks: :class:`LibraryRecordFilter` shows a quoted value only when it is a
valid UID (else its length) and replaces a traceback by the exception's type.
"""

from __future__ import annotations

import logging
import re
import sys
import warnings

from pydicom.uid import UID

MAX_LINE = 4096


def clean(value: object, limit: int = 80) -> str:
    """A data-set value made safe to log: printable, one line, at most ``limit`` characters."""
    text = "" if value is None else str(value)
    if len(text) > limit:
        text = text[:limit] + f"...({len(text)} chars)"
    return escape_controls(text)


def one_line(text: str, limit: int | None = None, *, squeeze: bool = False) -> str:
    """A message that may span lines (decoder plugins, exceptions) as one line for the job log.

    Its non-blank lines, stripped, joined by single spaces; with ``squeeze`` every run of
    whitespace, inside lines too, becomes one space.  Longer than ``limit``: cut to ``limit``
    characters, the last three ``...``.  Control characters other than line breaks stay: pass
    the result through :func:`clean` (or :func:`escape_controls`) where that matters.
    """
    if squeeze:
        flat = " ".join(text.split())
    else:
        flat = " ".join(part.strip() for part in text.splitlines() if part.strip())
    if limit is not None and len(flat) > limit:
        flat = flat[: limit - 3] + "..."
    return flat


def escape_controls(text: str) -> str:
    """Non-printable characters (line breaks, NUL, ESC, ...) as ``\\xNN`` escapes."""
    if text.isprintable():
        return text
    return "".join(ch if ch.isprintable() else f"\\x{ord(ch):02x}" for ch in text)


def loggable_uid(value: object) -> str:
    """A UID from the wire as a log line may show it: the UID itself when it is a valid one;
    otherwise only its length (an invalid UID field can carry anything, a patient ID say)."""
    text = "" if value is None else str(value)
    if text and len(text) <= 64 and UID(text).is_valid:
        return text
    return f"<not a UID, {len(text)} chars>"


# A single-quoted text in a library's message; followed by " value" it names a field
# ("Invalid 'Affected SOP Instance UID' value '...'") and is kept.
_QUOTED = re.compile(r"'([^']*)'( value\b)?")
LIBRARY_LOGGERS = ("pynetdicom",)


def _shown(match: re.Match[str]) -> str:
    if match.group(2):
        return match.group(0)
    return f"'{loggable_uid(match.group(1))}'"


class LibraryRecordFilter(logging.Filter):
    """For records of the libraries that see the wire (pynetdicom): quoted values shown only
    when they are valid UIDs, and no traceback (its frames can quote request values); the
    exception's type is kept."""

    def filter(self, record: logging.LogRecord) -> bool:
        if not record.name.startswith(LIBRARY_LOGGERS):
            return True
        message = _QUOTED.sub(_shown, record.getMessage())
        if record.exc_info and record.exc_info[0] is not None:
            message = f"{message} ({record.exc_info[0].__name__})"
        record.msg, record.args = message, None
        record.exc_info, record.exc_text, record.stack_info = None, None, None
        return True


class OneLineFilter(logging.Filter):
    """Escape control characters in messages (line breaks, terminal escapes) and cut
    overlong ones; tracebacks stay as they are."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        flat = escape_controls(message)
        if len(flat) > MAX_LINE:
            flat = flat[:MAX_LINE] + f"...({len(flat)} chars)"
        if flat != message:
            record.msg, record.args = flat, None
        return True


def configure_logging(level: str = "INFO", allow_patient_data: bool = False) -> None:
    logging.basicConfig(
        level=level.upper(),
        stream=sys.stderr,
        format="%(asctime)s %(levelname)-7s %(name)s: %(message)s",
        force=True,
    )
    verbose = allow_patient_data and level.upper() == "DEBUG"
    for handler in logging.getLogger().handlers:
        if not verbose:
            handler.addFilter(LibraryRecordFilter())
        handler.addFilter(OneLineFilter())
    noisy = "DEBUG" if verbose else "WARNING"
    for name in ("pynetdicom", "highdicom", "apscheduler", "tensorflow", "absl", "h5py"):
        logging.getLogger(name).setLevel(noisy)
    if not verbose:
        # pydicom logs and warns with the offending value in the message.
        logging.getLogger("pydicom").setLevel(logging.CRITICAL)
        warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
        warnings.filterwarnings("ignore", category=UserWarning, module=r"highdicom(\.|$)")
