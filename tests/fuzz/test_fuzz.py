"""Fuzzing the running node over real associations with seeded, mutated CR/DX/CT datasets.

One node (``worker_threads=1``, no PACS, 1 s quiet period) receives a few thousand data sets
made by ``tests.support.mutations`` from valid templates; most of them are not chest studies,
so they end ``ignored`` quickly, and a few hundred reach the X-ray and CT pipelines.  Then:

* the node never exits or hangs: a C-ECHO answers within 5 s after every association;
* every sent instance gets a status, or the association ended cleanly (counted);
* every accepted instance is filed under the study it was sent with and ends ``done``, or
  ``failed``/``ignored`` with a one-line reason; valid chest data sets (controls, missing
  Type 2 attributes, deflate, RLE) end ``done``;
* every refused instance is a ``rejected`` row with its status;
* no orphan or temporary files, nothing written outside the data directory;
* no planted patient value in the log or the job log, no log line over 4 KB, no log line
  started by a planted line break.

Seed and size: ``DICOM_NODE_FUZZ_SEED`` (default below, printed), ``DICOM_NODE_FUZZ_DATASETS``
(mutated data sets, default 2000).  Every failure names ``seed=... case=... mutation=...``;
``python -m tests.support.mutations --seed S --case N --describe`` rebuilds that case.
The summary (status histogram, job states, counts, every problem) is written to
``fuzz-report.txt`` in the test's tmp dir and printed (``-s``).
"""

from __future__ import annotations

import json
import os
import random
import re
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from pydicom.uid import UID

from tests.support.dicom_client import StoreOutcome, StoreSession, echo
from tests.support.mutations import (
    INJECTED,
    PATIENT_AGE_PREFIX,
    PATIENT_ID_PREFIX,
    PATIENT_NAME_PREFIX,
    PLANTED_BIRTH_DATE,
    Case,
    Item,
    build_templates,
    make_cases,
)
from tests.support.nodecheck import (
    FINAL_STATES,
    UNSETTLED_STATES,
    JobLogReader,
    SandboxNode,
    find_markers,
    log_line_problems,
    orphan_problems,
    reason_problems,
    tree,
)

DEFAULT_SEED = 20250117
ECHO_LIMIT_SECONDS = 5.0
SLOW_STORE_SECONDS = 10.0
SETTLE_TIMEOUT_SECONDS = 420.0

MARKERS = {
    "patient name": re.compile(rf"{PATIENT_NAME_PREFIX}(\d{{5}})"),
    "patient id": re.compile(rf"{PATIENT_ID_PREFIX}(\d{{5}})"),
    "birth date": re.compile(rf"(?<![\d.]){PLANTED_BIRTH_DATE}(?![\d.])"),
    "malformed birth date": re.compile(r"1823[-/]09[-/]17|17\.09\.1823"),
    "patient age": re.compile(rf"{PATIENT_AGE_PREFIX}(\d{{5}})"),
}
# Columns where bytes of a damaged data set can legitimately land (a length that swallowed
# the next elements): tolerated for byte-level mutations only.
DESCRIPTIVE_COLUMNS = {"description", "body_part", "modality", "image_type"}


@dataclass
class Sent:
    case: Case
    item: Item
    outcome: StoreOutcome
    association: int


@dataclass
class Run:
    seed: int
    sent: list[Sent] = field(default_factory=list)
    associations: int = 0
    association_failures: Counter[str] = field(default_factory=Counter)
    echo_seconds: list[float] = field(default_factory=list)
    problems: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))
    notes: dict[str, list[str]] = field(default_factory=lambda: defaultdict(list))

    def problem(self, check: str, message: str) -> None:
        self.problems[check].append(message)


def schedule(cases: list[Case], seed: int) -> list[list[tuple[Case, Item]]]:
    """Items grouped into associations of 5-30 (whole cases), deferred items placed later."""
    rng = random.Random(f"dicom-node-fuzz/schedule/{seed}")
    batches: list[list[tuple[Case, Item]]] = [[]]
    later: dict[int, list[tuple[Case, Item]]] = defaultdict(list)
    size = rng.randint(5, 30)
    for case in cases:
        for item in case.items:
            if item.defer:
                later[len(batches) - 1 + item.defer].append((case, item))
            else:
                batches[-1].append((case, item))
        if len(batches[-1]) >= size:
            batches.append([])
            size = rng.randint(5, 30)
    for index in sorted(later):
        while len(batches) <= index:
            batches.append([])
        batches[index].extend(later[index])
    return [batch for batch in batches if batch]


def send_all(node: SandboxNode, run: Run, batches: list[list[tuple[Case, Item]]]) -> None:
    """Send every batch on an association of its own, then C-ECHO on a fresh one.

    When the node ends an association, the items not yet sent go on the next one (once).
    """
    carry: list[tuple[Case, Item]] = []
    carried: set[int] = set()
    for number, planned in enumerate(batches):
        batch = carry + planned
        carry = []
        run.associations += 1
        with StoreSession("127.0.0.1", node.port) as session:
            if not session.established:
                run.association_failures["refused at association"] += 1
                run.problem(
                    "association refused",
                    f"association {number} (cases {sorted({c.index for c, _ in batch})[:10]}) "
                    "was not established",
                )
            for position, (case, item) in enumerate(batch):
                if not session.established:
                    for rest in batch[position:]:
                        if id(rest[1]) in carried:
                            run.association_failures["item dropped after two associations"] += 1
                        else:
                            carried.add(id(rest[1]))
                            carry.append(rest)
                    break
                outcome = session.store(item)
                run.sent.append(Sent(case, item, outcome, number))
                if outcome.category == "aborted":
                    run.association_failures["aborted during a C-STORE"] += 1
                    run.notes["association ended during a C-STORE (counted)"].append(
                        f"{case.name} [{item.label}] after {outcome.seconds:.2f} s"
                    )
        seconds = echo("127.0.0.1", node.port, ECHO_LIMIT_SECONDS)
        if seconds is None:
            cases = sorted({c.name for c, _ in batch})
            run.problem(
                "node hung or exited",
                f"no C-ECHO answer within {ECHO_LIMIT_SECONDS:.0f} s after association "
                f"{number}; node running: {node.running}; its cases: {cases[:5]}",
            )
            if not node.running:
                return
        else:
            run.echo_seconds.append(seconds)


def check_outcomes(run: Run, reader: JobLogReader) -> None:
    instances = {row.sop_instance_uid: row for row in reader.instances()}
    jobs_by_study: dict[str, list] = defaultdict(list)
    for job in reader.jobs():
        jobs_by_study[job.study_instance_uid].append(job)
    rejections = reader.rejections()
    by_sop: dict[str, list[int]] = defaultdict(list)
    unnamed: Counter[int] = Counter()
    for rejection in rejections:
        if rejection.sop_instance_uid:
            by_sop[rejection.sop_instance_uid].append(rejection.status)
        else:
            unnamed[rejection.status] += 1
        for problem in reason_problems(rejection.reason, "rejection"):
            if "raw exception" in problem:
                run.notes["rejection reason is raw exception text"].append(problem)
            else:
                run.problem("rejection reason", problem)

    last_accepted: dict[str, Sent] = {}
    refused_unnamed: dict[int, list[Sent]] = defaultdict(list)
    for sent in run.sent:
        outcome, item, case = sent.outcome, sent.item, sent.case
        where = f"{case.name} [{item.label}]"
        if outcome.category == "no-response":
            run.problem("C-STORE not answered", f"{where}: no response in {outcome.seconds:.0f} s")
        elif outcome.category == "invalid-response":
            run.problem("C-STORE not answered", f"{where}: response without a status")
        if outcome.seconds > SLOW_STORE_SECONDS:
            run.problem("slow C-STORE answer", f"{where}: {outcome.seconds:.1f} s")
        if outcome.accepted:
            last_accepted[item.affected_sop_instance] = sent
        elif outcome.refused:
            # The row names the request's SOP Instance UID (or its first value, when it holds
            # a backslash), or the data set's when only that one is valid.
            first_value = item.affected_sop_instance.split("\\")[0]
            for sop in (item.affected_sop_instance, first_value, item.sop_uid):
                statuses = by_sop.get(sop or "")
                if statuses and outcome.status in statuses:
                    statuses.remove(outcome.status)
                    break
            else:
                refused_unnamed[outcome.status or 0].append(sent)
        if case.expect_done and not outcome.accepted and outcome.category != "no-context":
            run.problem(
                "valid data set refused",
                f"{where}: status {outcome.category} for a valid data set",
            )
    for status, refusals in sorted(refused_unnamed.items()):
        # Refusals whose SOP Instance UID the node could not record match rows without one;
        # list first those sent with a valid UID (the row should have named it).
        refusals.sort(key=lambda s: not is_valid_uid(s.item.affected_sop_instance))
        missing = len(refusals) - unnamed[status]
        if missing > 0:
            examples = "; ".join(
                f"{s.case.name} [{s.item.label}, affected SOP {s.item.affected_sop_instance!r}]"
                for s in refusals[:3]
            )
            run.problem(
                "refusal not recorded",
                f"{missing} of {len(refusals)} refusal(s) with status 0x{status:04X} have no "
                f"matching rejected row ({unnamed[status]} rows without a SOP UID); "
                f"candidates: {examples}",
            )

    seen_jobs: set[int] = set()
    for sop, sent in last_accepted.items():
        case, item = sent.case, sent.item
        where = f"{case.name} [{item.label}]"
        row = instances.get(sop)
        if row is None and item.sop_uid and item.sop_uid in instances:
            run.problem(
                "accepted a SOP Instance UID mismatch",
                f"{where}: accepted (filed as {item.sop_uid}) although the request's Affected "
                f"SOP Instance UID is {sop!r}",
            )
            row = instances[item.sop_uid]
        if row is None:
            run.problem("accepted instance not filed", f"{where}: no instance row for {sop!r}")
            continue
        if item.study_uid is not None and row.study_instance_uid != item.study_uid:
            run.problem(
                "instance filed under another study",
                f"{where}: sent in study {item.study_uid}, filed under {row.study_instance_uid}",
            )
        jobs = sorted(jobs_by_study.get(row.study_instance_uid, []), key=lambda j: j.version)
        if not jobs:
            run.problem("accepted instance without a job", f"{where}: study has no job")
            continue
        job = jobs[-1]
        if job.job_id in seen_jobs:
            continue  # one report per job, not per slice
        seen_jobs.add(job.job_id)
        if job.state not in FINAL_STATES:
            run.problem("job did not settle", f"{where}: job {job.job_id} still {job.state}")
        elif job.state == "dead":
            run.problem("job dead without a PACS", f"{where}: job {job.job_id}: {job.error}")
        elif job.state in ("failed", "ignored"):
            for problem in reason_problems(job.error, f"{where}: {job.state} job {job.job_id}"):
                raw = "raw exception" in problem
                check = "raw exception text in job error" if raw else "job error not one line"
                run.problem(check, problem)
        if case.expect_done and job.state != "done":
            run.problem(
                "valid chest data set not analysed",
                f"{where}: job {job.job_id} {job.state}: {(job.error or '')[:300]}",
            )
        if job.instances < 1:
            run.problem("job without instances", f"{where}: job {job.job_id} counts 0 instances")


def is_valid_uid(value: str) -> bool:
    return bool(value) and UID(value).is_valid


def check_leaks(run: Run, node: SandboxNode, reader: JobLogReader, cases: list[Case]) -> None:
    by_index = {case.index: case for case in cases}
    log = node.log_text()
    for name, hits in find_markers(log, MARKERS).items():
        examples = sorted(
            {by_index[int(h)].name for h in hits if h.isdigit() and int(h) in by_index}
        )
        run.problem(
            "patient data in the node log",
            f"{len(hits)} planted {name}(s) in the log; cases: {examples[:5] or hits[:5]}; "
            f"first line: {_first_line(log, MARKERS[name])}",
        )
    for problem in log_line_problems(log, INJECTED):
        if "unhandled exception" in problem:
            run.problem("unhandled exception in a node thread", problem)
        else:
            run.problem("malformed log line", problem)
    # Other files the node keeps beside the job log (e.g. an audit trail): never patient data.
    for path in sorted(node.data_dir.iterdir()):
        if path.is_file() and not path.name.startswith("jobs.sqlite"):
            for name, hits in find_markers(path.read_text(errors="replace"), MARKERS).items():
                run.problem(
                    "patient data in the data directory",
                    f"{len(hits)} planted {name}(s) in {path.name}: {hits[:3]}",
                )
    for table, column, value in reader.text_values():
        for name, hits in find_markers(value, MARKERS).items():
            owners = [by_index.get(int(h)) for h in hits if h.isdigit()]
            tolerated = column in DESCRIPTIVE_COLUMNS and all(c and c.byte_level for c in owners)
            message = (
                f"planted {name} in {table}.{column}: {value[:200]!r} "
                f"(cases {[c.name for c in owners if c][:3]})"
            )
            if tolerated:
                run.notes["damaged bytes landed in a descriptive column"].append(message)
            else:
                run.problem("patient data in the job log", message)


def _first_line(text: str, pattern: re.Pattern[str]) -> str:
    for line in text.splitlines():
        if pattern.search(line):
            return repr(line[:300])
    return ""


def check_admin_listing(run: Run, node: SandboxNode) -> list[dict[str, Any]]:
    """``dicom-node jobs --json`` over everything the fuzzer left (it must cope with it)."""
    try:
        rows = node.jobs_json()
    except Exception as exc:
        run.problem("dicom-node jobs --json", f"{type(exc).__name__}: {str(exc)[:500]}")
        return []
    for row in rows:
        for name, hits in find_markers(json.dumps(row), MARKERS).items():
            run.problem("patient data in the job log", f"jobs --json row holds a {name}: {hits}")
    return rows


def report(
    run: Run, cases: list[Case], rows: list[dict[str, Any]], elapsed: dict[str, float]
) -> str:
    states = Counter(row["state"] for row in rows)
    pipelines = Counter(f"{row['pipeline']} {row['state']}" for row in rows if row.get("pipeline"))
    statuses = Counter(s.outcome.category for s in run.sent)
    mutated = sum(1 for s in run.sent if s.item.mutated)
    by_mutation: dict[str, Counter[str]] = defaultdict(Counter)
    for s in run.sent:
        by_mutation[s.case.mutation][s.outcome.category] += 1
    lines = [
        f"fuzz seed {run.seed}: {len(cases)} cases, {len(run.sent)} C-STOREs "
        f"({mutated} of mutated data sets) over {run.associations} associations",
        "timings: " + ", ".join(f"{k} {v:.1f} s" for k, v in elapsed.items()),
        f"C-ECHO after each association: max {max(run.echo_seconds, default=0):.2f} s",
        f"association failures: {dict(run.association_failures)}",
        "status histogram (status -> count):",
        *(f"  {k}: {v}" for k, v in sorted(statuses.items())),
        "job log (state -> rows, dicom-node jobs --json):",
        *(f"  {k}: {v}" for k, v in sorted(states.items())),
        "jobs routed to a pipeline (pipeline state -> jobs): "
        + ", ".join(f"{k} {v}" for k, v in sorted(pipelines.items())),
        "by mutation:",
        *(f"  {m}: {dict(sorted(c.items()))}" for m, c in sorted(by_mutation.items())),
    ]
    for title, groups in (("PROBLEMS", run.problems), ("notes (not failures)", run.notes)):
        if groups:
            lines.append(f"{title}:")
            for check, messages in sorted(groups.items()):
                lines.append(f"  [{check}] {len(messages)}x")
                lines += [f"    - {m}" for m in messages[:8]]
    return "\n".join(lines)


@pytest.mark.slow
def test_mutated_datasets_never_break_the_node(tmp_path: Path) -> None:
    seed = int(os.environ.get("DICOM_NODE_FUZZ_SEED", DEFAULT_SEED))
    target = int(os.environ.get("DICOM_NODE_FUZZ_DATASETS", 2000))
    print(f"\nfuzz seed {seed} (DICOM_NODE_FUZZ_SEED), {target} mutated data sets")
    elapsed: dict[str, float] = {}
    started = time.monotonic()
    cases = make_cases(build_templates(tmp_path / "templates"), seed, target)
    batches = schedule(cases, seed)
    elapsed["generate"] = time.monotonic() - started

    sandbox = tmp_path / "sandbox"
    node = SandboxNode(
        sandbox,
        tmp_path / "node.log",
        worker_threads=1,
        study_quiet_seconds=1,
        # Cases that end their association with an abort hold their study for the resend
        # (``interrupted_study_hold_seconds``); here no resend comes.
        interrupted_study_hold_seconds=2,
    )
    run = Run(seed)
    try:
        started = time.monotonic()
        node.start()
        elapsed["node start"] = time.monotonic() - started
        outside_before = tree(sandbox, skip=node.data_dir)

        started = time.monotonic()
        send_all(node, run, batches)
        elapsed["send"] = time.monotonic() - started

        started = time.monotonic()
        reader = JobLogReader(node.data_dir / "jobs.sqlite")
        counts = reader.wait_settled(SETTLE_TIMEOUT_SECONDS)
        elapsed["settle"] = time.monotonic() - started
        unsettled = {k: v for k, v in counts.items() if k in UNSETTLED_STATES and v}
        if unsettled:
            run.problem(
                "job did not settle",
                f"after {SETTLE_TIMEOUT_SECONDS:.0f} s still {unsettled} (all: {dict(counts)})",
            )
        if not node.running:
            run.problem(
                "node hung or exited", f"the node exited; log tail: {node.log_text()[-2000:]}"
            )

        started = time.monotonic()
        check_outcomes(run, reader)
        for problem in orphan_problems(node.data_dir, reader.instances(), reader.rejections()):
            run.problem("orphan or stray file", problem)
        outside = tree(sandbox, skip=node.data_dir) - outside_before
        if outside:
            run.problem("written outside the data directory", f"new paths: {sorted(outside)[:20]}")
        check_leaks(run, node, reader, cases)
        rows = check_admin_listing(run, node)
        elapsed["checks"] = time.monotonic() - started
    finally:
        node.stop()

    text = report(run, cases, rows, elapsed)
    path = tmp_path / "fuzz-report.txt"
    path.write_text(text + "\n")
    with (tmp_path / "fuzz-sent.jsonl").open("w") as sent_log:  # one line per C-STORE
        for s in run.sent:
            record = {
                "case": s.case.index,
                "mutation": s.case.mutation,
                "detail": s.case.detail,
                "item": s.item.label,
                "association": s.association,
                "affected_sop_instance": s.item.affected_sop_instance,
                "sop_uid": s.item.sop_uid,
                "study_uid": s.item.study_uid,
                "status": s.outcome.category,
                "seconds": round(s.outcome.seconds, 3),
            }
            sent_log.write(json.dumps(record) + "\n")
    print(text)
    print(f"report: {path}")
    assert not run.problems, (
        f"{sum(map(len, run.problems.values()))} problem(s) in {len(run.problems)} check(s): "
        f"{sorted(run.problems)}; seed {seed}; full report: {path}\n{text[-6000:]}"
    )
