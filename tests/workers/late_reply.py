#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: sleeps past the pool timeout (input "sleep_ms",
default 3000 ms against the default 2 s) and then answers the job it was given, which by then is
an old job id the daemon must discard."""
import json
import sys
import time

for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    inputs = job.get("inputs") or {}
    time.sleep(int(inputs.get("sleep_ms", 3000)) / 1000.0)
    sys.stdout.write(json.dumps({"job": job.get("job"), "result": {"late": True}}) + "\n")
    sys.stdout.flush()
