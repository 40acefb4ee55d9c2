"""``dicom-node``: serve, echo, send, jobs, requeue, classify, config, db.

Every command is ``main(args)``-callable so tests can run it in-process.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import json
import os
import re
import ssl
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from sqlalchemy.exc import SQLAlchemyError

from dicom_node import RESEARCH_NOTICE, __version__
from dicom_node.config import PacsAddress, Settings, load_settings
from dicom_node.errors import ConfigError
from dicom_node.joblog import AdminLog, JobLog, migrate
from dicom_node.joblog.migrate import SchemaError
from dicom_node.joblog.records import JobRow

# CLI flag -> settings field, for ``serve`` (and the data dir for every command).
_SERVE_FLAGS = {
    "ae_title": "--ae-title",
    "host": "--host",
    "port": "--port",
    "http_port": "--http-port",
    "pacs": "--pacs",
    "allowed_aes": "--allowed-aes",
    "study_quiet_seconds": "--quiet-seconds",
    "worker_threads": "--worker-threads",
    "roles": "--roles",
    "worker_name": "--worker-name",
    "models_dir": "--models-dir",
    "log_level": "--log-level",
}


_TLS_HELP = (
    "DICOM TLS with the node's certificate (default: on for this node when tls_cert is set, "
    "for --to when pacs_tls is set)"
)


class UsageError(Exception):
    """A user's mistake on the command line: one line on stderr, exit status 2."""


def _add_global_options(parser: argparse.ArgumentParser, default: Any = None) -> None:
    parser.add_argument("--config", type=Path, default=default, help="TOML settings file")
    parser.add_argument(
        "--data-dir", default=default, help="inbox, outbox and job log (DICOM_NODE_DATA_DIR)"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dicom-node",
        description=f"An AI modality on the DICOM network. {RESEARCH_NOTICE}.",
    )
    parser.add_argument("--version", action="version", version=f"dicom-node {__version__}")
    _add_global_options(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    # --config and --data-dir work after the command too (``jobs --data-dir X``); SUPPRESS
    # keeps a subcommand from resetting what was given before it.
    common = argparse.ArgumentParser(add_help=False)
    _add_global_options(common, argparse.SUPPRESS)

    serve = sub.add_parser(
        "serve", parents=[common], help="run the node (SCP, worker, sender, admin HTTP)"
    )
    for field, flag in _SERVE_FLAGS.items():
        serve.add_argument(flag, dest=field, help=f"overrides DICOM_NODE_{field.upper()}")

    echo = sub.add_parser("echo", parents=[common], help="C-ECHO a DICOM peer (default: this node)")
    echo.add_argument("--to", help="AE@host:port")
    echo.add_argument("--aet", help="calling AE title (default: the node's AE title)")
    echo.add_argument("--tls", action=argparse.BooleanOptionalAction, help=_TLS_HELP)

    send = sub.add_parser(
        "send", parents=[common], help="C-STORE files to a DICOM peer (default: this node)"
    )
    send.add_argument("files", nargs="+", type=Path)
    send.add_argument("--to", help="AE@host:port")
    send.add_argument("--aet", help="calling AE title (default: the node's AE title)")
    send.add_argument("--tls", action=argparse.BooleanOptionalAction, help=_TLS_HELP)

    jobs = sub.add_parser("jobs", parents=[common], help="show the job log")
    jobs.add_argument("--follow", "-f", action="store_true", help="keep printing changes")
    jobs.add_argument("--json", action="store_true", help="one JSON object per line")
    jobs.add_argument("--limit", "-n", type=int, default=50, help="last N rows (default 50)")
    jobs.add_argument("--interval", type=float, default=1.0, help="poll seconds with --follow")
    jobs.add_argument("--wide", action="store_true", help="do not shorten long lines")

    requeue = sub.add_parser("requeue", parents=[common], help="re-run failed or dead jobs")
    requeue.add_argument("job_ids", nargs="*", type=int, help="job ids (default: all)")
    requeue.add_argument(
        "--state", action="append", choices=["failed", "dead"], help="only jobs in this state"
    )

    classify = sub.add_parser(
        "classify", parents=[common], help="classify DICOM/PNG/JPEG files ad hoc"
    )
    classify.add_argument("paths", nargs="+", type=Path, help="files; a directory = one series")
    classify.add_argument("--pipeline", choices=["xray", "ct"], help="default: guessed")
    classify.add_argument("--json", action="store_true", help="one JSON object per input")
    classify.add_argument("--heatmap-dir", type=Path, help="write heatmap PNGs here")

    sub.add_parser("config", parents=[common], help="print the effective configuration as JSON")

    db = sub.add_parser(
        "db", parents=[common], help="the job log's schema (DICOM_NODE_DATABASE_URL)"
    )
    db_sub = db.add_subparsers(dest="db_command", required=True)
    db_sub.add_parser(
        "upgrade", parents=[common], help="apply the schema migrations this release needs"
    )
    db_sub.add_parser(
        "check", parents=[common], help="exit 0 when the schema is this release's, else say why"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    # TensorFlow's C++ start-up chatter (oneDNN, CPU features) is noise in an admin's log.
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    args = build_parser().parse_args(argv)
    try:
        settings = _settings(args)
    except ConfigError as exc:
        print(f"dicom-node: configuration error: {exc}", file=sys.stderr)
        return 2
    command = args.command
    if command == "serve":
        return _serve(settings)
    if command == "config":
        print(json.dumps(settings.describe(), indent=2))
        for note in _security_notes(settings):
            print(f"dicom-node: {note}", file=sys.stderr)
        return 0
    if command in {"echo", "send"}:
        try:
            peer = _peer(settings, args.to)
            tls = _client_tls(settings, args.to, args.tls)
            if command == "echo":
                return _echo(peer, args.aet or settings.ae_title, tls)
            paths = _dicom_files(args.files)
        except ConfigError as exc:
            print(f"dicom-node: configuration error: {exc}", file=sys.stderr)
            return 2
        except UsageError as exc:
            print(f"dicom-node {command}: {exc}", file=sys.stderr)
            return 2
        return _send(settings, peer, args.aet or settings.ae_title, paths, tls)
    if command == "jobs":
        width = None if args.wide else LINE_WIDTH
        return _jobs(settings, args.follow, args.json, args.limit, args.interval, sys.stdout, width)
    if command == "requeue":
        return _requeue(settings, args.job_ids, args.state)
    if command == "db":
        return _db(settings, args.db_command)
    if command == "classify":
        from dicom_node.cli.classify import run_classify

        with _native_noise_filtered():
            return run_classify(
                list(args.paths), args.pipeline, args.json, args.heatmap_dir, sys.stdout, sys.stderr
            )
    raise AssertionError(command)


# TensorFlow's native start-up lines (oneDNN, absl, CUDA probing on a machine without a GPU).
_NATIVE_NOISE = re.compile(
    r"oneDNN custom operations|absl::InitializeLog|Unable to register cu(DNN|FFT|BLAS)"
    r"|TF-TRT Warning|This TensorFlow binary is optimized|Could not find cuda drivers"
    r"|cuda_(dnn|fft|blas|executor)\.cc|computation_placer|rebuild TensorFlow with"
)


@contextlib.contextmanager
def _native_noise_filtered() -> Iterator[None]:
    """TensorFlow's C++ code writes its start-up lines to file descriptor 2, past Python's
    logging and ``TF_CPP_MIN_LOG_LEVEL``: hold what reaches descriptor 2 and pass on all but
    those lines, so the user's terminal shows what the node says."""
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            for line in held.read().decode("utf-8", "replace").splitlines(keepends=True):
                if not _NATIVE_NOISE.search(line):
                    sys.stderr.write(line)
            sys.stderr.flush()


def _settings(args: argparse.Namespace) -> Settings:
    overrides: dict[str, Any] = {"data_dir": args.data_dir}
    for field in _SERVE_FLAGS:
        overrides[field] = getattr(args, field, None)
    return load_settings(args.config, overrides=overrides)


def _serve(settings: Settings) -> int:
    from dicom_node.app import Node
    from dicom_node.logs import configure_logging

    configure_logging(settings.log_level, settings.log_patient_data)
    import logging

    logging.getLogger("dicom_node").info("effective configuration: %s", settings.describe())
    try:
        node = Node(settings)
        node.run_forever()
    except ConfigError as exc:
        print(f"dicom-node: configuration error: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:  # e.g. the port is taken
        busy = _busy_port(settings) if exc.errno == errno.EADDRINUSE else None
        print(f"dicom-node: cannot start: {busy or exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"dicom-node: cannot start: the job log: {_db_error(exc)}", file=sys.stderr)
        return 1
    return 0


def _busy_port(settings: Settings) -> str | None:
    """Which of the node's listening ports another process holds, said with its setting."""
    import socket

    listeners = [("port", settings.host, settings.port)]
    listeners.append(("http_port", settings.http_host, settings.http_port))
    if settings.dicomweb_port is not None:
        listeners.append(("dicomweb_port", settings.dicomweb_host, settings.dicomweb_port))
    for setting, host, port in listeners:
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                probe.bind((host, port))
            except OSError:
                return (
                    f"port {port} on {host} is already in use ({setting}, "
                    f"DICOM_NODE_{setting.upper()}): stop the other process or choose another port"
                )
    return None


def _peer(settings: Settings, to: str | None) -> PacsAddress:
    if to:
        try:
            return PacsAddress.parse(to, "to")
        except ConfigError as exc:
            problem = str(exc).split(": ", 1)[-1]
            raise UsageError(f"--to: {problem} (for example ORTHANC@127.0.0.1:4242)") from None
    host = "127.0.0.1" if settings.host in {"0.0.0.0", "::"} else settings.host
    return PacsAddress(settings.ae_title, host, settings.port)


def _security_notes(settings: Settings) -> list[str]:
    """What ``config`` says on stderr (the JSON on stdout stays machine-readable)."""
    from dicom_node.admin.audit import audit_path

    notes = []
    if not settings.allowed_aes:
        notes.append(
            "warning: allowed_aes is empty, so any calling AE may connect and store "
            "(the demo default); production needs ALLOWED_AES (DICOM_NODE_ALLOWED_AES)"
        )
    if not settings.tls_enabled:
        notes.append("warning: DICOM TLS is off (tls_cert unset): traffic is in clear text")
    notes.append(f"audit trail: {audit_path(settings)}")
    return notes


def _client_tls(settings: Settings, to: str | None, flag: bool | None) -> ssl.SSLContext | None:
    """TLS for ``echo``/``send``: asked for, or the default for the target (see _TLS_HELP)."""
    use = flag if flag is not None else (settings.pacs_tls if to else settings.tls_enabled)
    if not use:
        return None
    from dicom_node.tls import client_context

    # The node's own certificate names its public host, not the loopback we reach it on:
    # for a check of this node the chain is verified, the host name is not.
    return client_context(settings, check_hostname=to is not None)


def _echo(peer: PacsAddress, calling_ae: str, tls: ssl.SSLContext | None = None) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]

    ae = AE(ae_title=calling_ae)
    ae.add_requested_context(Verification)
    tls_args = (tls, peer.host) if tls is not None else None
    assoc = ae.associate(peer.host, peer.port, ae_title=peer.ae_title, tls_args=tls_args)
    if not assoc.is_established:
        how = "rejected" if assoc.is_rejected else "failed"
        print(f"C-ECHO to {peer}: association {how}", file=sys.stderr)
        return 1
    status = assoc.send_c_echo()
    assoc.release()
    code = int(getattr(status, "Status", -1))
    print(f"C-ECHO to {peer}: status 0x{code:04X}")
    return 0 if code == 0 else 1


def _dicom_files(arguments: list[Path]) -> list[Path]:
    """The files to send: each file named, and the DICOM files under each folder named."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    def sop_class(path: Path) -> str | None:
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPClassUID"])
        except (InvalidDicomError, OSError, ValueError, EOFError):
            return None
        return str(header.get("SOPClassUID", "") or "") or None

    paths: list[Path] = []
    for argument in arguments:
        if argument.is_dir():
            found = [p for p in sorted(argument.rglob("*")) if p.is_file() and sop_class(p)]
            if not found:
                raise UsageError(f"{argument}: no DICOM files in this folder")
            paths += found
        elif not argument.exists():
            raise UsageError(f"{argument}: no such file or folder")
        elif sop_class(argument) is None:
            raise UsageError(f"{argument}: not a DICOM file (Part 10 with a SOP Class UID)")
        else:
            paths.append(argument)
    return paths


def _send(
    settings: Settings,
    peer: PacsAddress,
    calling_ae: str,
    paths: list[Path],
    tls: ssl.SSLContext | None = None,
) -> int:
    from dicom_node.delivery.cstore_client import StoreClient

    results = StoreClient(calling_ae, settings.network_timeout_seconds, tls).send(peer, paths)
    failed = 0
    for path, result in zip(paths, results, strict=True):
        status = f"0x{result.status:04X}" if result.status is not None else "none"
        print(f"{path}: status {status}{' - ' + result.error if result.error else ''}")
        failed += not result.delivered
    return 1 if failed else 0


def _open_admin_log(settings: Settings) -> AdminLog | None:
    if settings.database_url is None and not settings.database_path.exists():
        print(
            f"dicom-node: no job log at {settings.database_path} (check DICOM_NODE_DATA_DIR)",
            file=sys.stderr,
        )
        return None
    try:
        return JobLog.open(settings.joblog_url).admin
    except SchemaError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
    except SQLAlchemyError as exc:
        print(f"dicom-node: cannot open the job log: {_db_error(exc)}", file=sys.stderr)
    return None


def _db(settings: Settings, action: str) -> int:
    from dicom_node.joblog.schema import make_engine

    if action == "check" and settings.database_url is None and not settings.database_path.exists():
        # Opening SQLite would create an empty job log here: say so and leave nothing behind.
        print(
            f"dicom-node: no job log at {settings.database_path} (check DICOM_NODE_DATA_DIR)",
            file=sys.stderr,
        )
        return 1
    engine = make_engine(settings.joblog_url)
    where = migrate.describe(engine)
    try:
        if action == "upgrade":
            result = migrate.upgrade(engine)
            if result.before == result.after:
                print(f"job log at {where}: schema {result.after}, up to date")
            else:
                print(f"job log at {where}: schema {result.before or 'empty'} -> {result.after}")
            return 0
        print(f"job log at {where}: schema {migrate.check(engine)}, as this release needs")
        return 0
    except SchemaError as exc:
        print(f"dicom-node: {exc}", file=sys.stderr)
        return 1
    except SQLAlchemyError as exc:
        print(f"dicom-node: cannot reach the job log at {where}: {_db_error(exc)}", file=sys.stderr)
        return 1
    finally:
        engine.dispose()


def _db_error(exc: SQLAlchemyError) -> str:
    """The driver's first line (no statement, no parameters)."""
    original = getattr(exc, "orig", None) or exc
    return str(original).strip().splitlines()[0] if str(original).strip() else type(exc).__name__


def _jobs(
    settings: Settings,
    follow: bool,
    as_json: bool,
    limit: int,
    interval: float,
    out: TextIO,
    width: int | None = None,
) -> int:
    joblog = _open_admin_log(settings)
    if joblog is None:
        return 1
    rows = joblog.job_rows(limit=limit)
    if not as_json:
        print(format_header(), file=out)
    for row in rows:
        print(format_row(row, as_json, width), file=out)
    out.flush()
    if not follow:
        return 0
    since = max((r.updated_at for r in rows), default=None)
    try:
        while True:
            time.sleep(interval)
            for row in joblog.job_rows(since=since):
                print(format_row(row, as_json, width), file=out)
                since = max(since, row.updated_at) if since else row.updated_at
            out.flush()
    except KeyboardInterrupt:
        return 0
    except BrokenPipeError:  # `jobs --follow | head`
        return 0


_COLUMNS = (
    ("JOB", 5),
    ("UPDATED (UTC)", 19),
    ("STATE", 8),
    ("PIPELINE", 8),
    ("MOD", 3),
    ("N", 4),
    ("WORKER", 16),
)


def format_header() -> str:
    head = " ".join(name.ljust(width) for name, width in _COLUMNS)
    return f"{head} STUDY / RESULT"


LINE_WIDTH = 160  # ``jobs`` lines are cut here (``--wide``: not)


def format_row(row: JobRow, as_json: bool, width: int | None = None) -> str:
    if as_json:
        return json.dumps(row.as_json())
    job = f"{row.job_id}" + (f".{row.version}" if row.version and row.version > 1 else "")
    cells = (
        job if row.job_id is not None else "-",
        row.updated_at.strftime("%Y-%m-%d %H:%M:%S"),
        row.state,
        row.pipeline or "-",
        row.modality or "-",
        str(row.instances),
        row.worker or "-",
    )
    line = " ".join(cell.ljust(width) for cell, (_, width) in zip(cells, _COLUMNS, strict=True))
    detail = row.error or _summary_text(row.summary)
    if row.deliveries_total:
        detail = f"{detail} [sent {row.deliveries_sent}/{row.deliveries_total}]".strip()
    text = f"{line} {row.study_instance_uid or '?'}  {detail}".rstrip()
    return text if width is None or len(text) <= width else text[: width - 3] + "..."


def _summary_text(summary: str | None) -> str:
    if not summary:
        return ""
    try:
        data = json.loads(summary)
    except ValueError:
        return summary
    if not isinstance(data, dict):
        return summary
    parts = []
    for key, value in data.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.3g}")
        elif isinstance(value, str | int):
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _audit_admin(settings: Settings, action: str, **fields: Any) -> None:
    """An admin action in the audit trail; a command that cannot write it says so."""
    from dicom_node.admin.audit import AuditLog

    try:
        # The serving process rotates the file; a short-lived command only appends.
        audit = AuditLog.for_settings(settings, rotate=False)
    except ConfigError as exc:
        print(f"dicom-node: warning: not audited: {exc}", file=sys.stderr)
        return
    try:
        audit.admin(action, **fields)
    finally:
        audit.close()


def _requeue(settings: Settings, job_ids: list[int], states: list[str] | None) -> int:
    joblog = _open_admin_log(settings)
    if joblog is None:
        return 1
    requeued = joblog.requeue(job_ids, states or ("failed", "dead"))
    _audit_admin(
        settings,
        "requeue",
        requested=job_ids or "all",
        states=list(states or ("failed", "dead")),
        requeued=requeued,
    )
    missing = sorted(set(job_ids) - set(requeued))
    for job_id in requeued:
        print(f"job {job_id} re-queued")
    if missing:
        print(f"not failed/dead or unknown: {', '.join(map(str, missing))}", file=sys.stderr)
    if not requeued and not missing:
        print("nothing to re-queue")
    return 1 if missing else 0


if __name__ == "__main__":
    raise SystemExit(main())
