#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: recycles itself. It answers its first job with
its inputs and pid, then lingers (argument, ms, default 1000) without reading and exits 0, so the
daemon may already have written it the next job. A job whose input "x" is "exit_now" makes it exit 0
at once without answering."""
import json
import os
import sys
import time

linger_ms = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    inputs = job.get("inputs") or {}
    if inputs.get("x") == "exit_now":
        os._exit(0)
    reply = {"job": job.get("job"), "result": {"echo": inputs, "pid": os.getpid()}}
    sys.stdout.write(json.dumps(reply) + "\n")
    sys.stdout.flush()
    time.sleep(linger_ms / 1000.0)
    os._exit(0)
