"""The platform's worker processes (started by the server, never by hand):

- ``plan STORE PLAN_ID --parent PID``: run one queued plan with the sweep machinery; its output is
  the plan's log. Exit 0 when every run has a record, 2 on bad input, 3 when the plan was cancelled.
  It stops (with its sweep workers: one process group) when the server process is gone.
- ``check-method STORE NAME``: the conformance suite on an uploaded method.
- ``check-model PATH ARCHITECTURE DATASET STORE``: whether uploaded weights (safetensors) load into
  the architecture, as a run would load them (one JSON line).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from harness import stopping


def run_plan(store: Path, plan_id: str, parent: int) -> int:
    from harness.errors import HarnessError
    from harness.orchestration.events import EventLog, SweepStopped
    from harness.plan import run_plan
    from harness.views.leaderboard import run_name
    from harness.web.config import ServerConfig
    from harness.web.planning import PlanError, resolve_request
    from harness.web.queue import PlanRecord, plan_lock
    from harness.web.uploads import Uploads

    # stopped (the server stops, or died): unwind, so that method processes are closed and runs in
    # flight log that they were interrupted; the plan resumes at the server's next start
    stopping.die_with(parent, group=True)
    stopping.install()
    cfg = ServerConfig.read(store)
    plan = PlanRecord.model_validate_json((cfg.web_dir / "plans" / f"{plan_id}.json").read_text())
    lock = plan_lock(cfg, plan_id)  # a worker of a previous server may still be finishing: wait for it
    try:
        try:
            resolved = resolve_request(plan.request, cfg, Uploads(cfg))
        except PlanError as e:
            print(f"error: {e}", flush=True)
            return 2
        n = len(resolved.specs)
        counter = iter(range(1, n + 1))

        def report(spec, record, how: str) -> None:
            what = f"{run_name(record)} {record.speedup.target:g}x seed {record.seed}"
            if how == "skipped":
                line = f"{what}: skipped ({record.status}, recorded)"
            elif record.status == "ok":
                m = record.metric
                line = (f"{what}: {m.name} {m.base:.2f} -> pruned {m.pruned:.2f} -> final {m.final:.2f} "
                        f"({m.delta:+.2f}) at {record.speedup.achieved:.2f}x")
            else:
                line = f"{what}: {record.status.upper()}: {record.error}"
            print(f"[{next(counter)}/{n}] {line}", flush=True)

        print(f"plan {plan_id}: {n} runs on {resolved.resolved.track.id}, executor {cfg.executor}"
              f"{f', {cfg.jobs} workers' if cfg.executor == 'local' else ''}", flush=True)
        events = EventLog(cfg.store.resolve(), stop_file=(cfg.web_dir / "plans" / f"{plan_id}.stop").resolve())
        try:
            summary = run_plan(resolved.resolved, on_result=report, log=lambda line: print(line, flush=True),
                               events=events)
        except SweepStopped:
            print("stopped: the plan was cancelled", flush=True)
            return 3
        except HarnessError as e:  # stopped before its runs, in one line (e.g. no target of the plan is reachable)
            print(f"error: {e}", flush=True)
            return 2
        print(f"ran {summary.ran}, skipped {summary.skipped} (already recorded), not ok {summary.failed}", flush=True)
        return 0
    finally:
        lock.close()


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python -m harness.web.worker")
    sub = parser.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan")
    p.add_argument("store", type=Path)
    p.add_argument("plan_id")
    p.add_argument("--parent", type=int, required=True)
    c = sub.add_parser("check-method")
    c.add_argument("store", type=Path)
    c.add_argument("name")
    c.add_argument("--parent", type=int, required=True)
    s = sub.add_parser("check-model")
    for name in ("path", "architecture", "dataset", "store"):
        s.add_argument(name)
    s.add_argument("--parent", type=int, required=True)
    args = parser.parse_args(argv)
    if args.cmd == "plan":
        return run_plan(args.store, args.plan_id, args.parent)
    stopping.die_with(args.parent, group=True)
    if args.cmd == "check-method":
        from harness.web.config import ServerConfig
        from harness.web.uploads import Uploads
        up = Uploads(ServerConfig.read(args.store)).run_checks(args.name)
        print(f"{up.name}: {up.status}: {up.detail}", flush=True)
        return 0
    from harness.web.uploads import check_model
    print(json.dumps(check_model(Path(args.path), args.architecture, args.dataset, Path(args.store))), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
