#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: answers a job with one endless-looking line,
100 MiB (input "mib" to change) of a JSON prefix and filler with no newline, to check the
daemon caps what it reads from a worker. It then waits for more input and exits at EOF."""
import json
import sys

CHUNK = b"x" * (1024 * 1024)

for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    mib = int((job.get("inputs") or {}).get("mib", 100))
    out = sys.stdout.buffer
    try:
        out.write(b'{"job":%d,"result":"' % int(job.get("job") or 0))
        for _ in range(mib):
            out.write(CHUNK)
        out.flush()
    except BrokenPipeError:
        sys.exit(0)
