"""The native relay as a process for the benchmark (a script, not a test).

    python3 tests/bench/native_relay_proc.py --backend HOST:NFS:MOUNT --log DIR \
        --durability async|sync|strict|none [--threads N]

Journals to a native LOG in DIR (the native writer, group commit and HLC)
with the given durability, or journals nothing (`none`: the relay alone).
Prints the line `nfsj proxy` prints when it serves, and stops on SIGTERM.
Until `nfsj proxy --data-plane native` runs on the native LOG, this is how
the benchmark measures the native plane.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from nfsproxy import _dataplane  # noqa: E402


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--backend", required=True, help="HOST:NFSPORT:MOUNTPORT")
    ap.add_argument("--log", required=True)
    ap.add_argument("--durability", choices=("async", "sync", "strict", "none"), required=True)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    host, nfs, mount = args.backend.rsplit(":", 2)
    journal = {}
    log = committer = None
    if args.durability != "none":
        log = _dataplane.NativeLog(args.log)
        committer = _dataplane.NativeCommitter(log, "async")
        journal = dict(committer=committer, clock=_dataplane.HLC(1), durability=args.durability)
    relay = _dataplane.Relay(host, int(nfs), int(mount), threads=args.threads, **journal)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    print(f"nfsj proxy: serving NFSv3+MOUNT on 127.0.0.1:{relay.port}, native relay "
          f"({args.threads} thread(s)), durability {args.durability}", flush=True)
    stop.wait()
    relay.stop()
    if committer is not None:
        committer.close()
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
