#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: works through "steps" steps (default 5), each
taking "step_ms" (default 0) of real sleep, emitting a checkpoint {"done": k} after each but the
last, then a result. Given a state {"done": k} it resumes after step k and says so in
"resumed_from". With "burst" true and no "step_ms" it writes its checkpoints in large writes, as
fast as its output takes them."""
import json
import sys
import time

for line in sys.stdin:
    if not line.strip():
        continue
    job = json.loads(line)
    inputs = job.get("inputs") or {}
    steps = int(inputs.get("steps", 5))
    step_s = int(inputs.get("step_ms", 0)) / 1000.0
    state = job.get("state") or {}
    done = int(state.get("done", 0)) if isinstance(state, dict) else 0
    start = done
    burst = bool(inputs.get("burst"))
    if burst and step_s == 0 and done < steps - 1:
        # All checkpoints but the last step's, in large writes.
        line = '{"job": %d, "checkpoint": {"done": %%d}}\n' % job.get("job")
        for first in range(done + 1, steps, 10000):
            last = min(first + 10000, steps)
            sys.stdout.write("".join(line % k for k in range(first, last)))
        done = steps
    while done < steps:
        time.sleep(step_s)
        done += 1
        if done < steps:
            sys.stdout.write(json.dumps({"job": job.get("job"), "checkpoint": {"done": done}}))
            sys.stdout.write("\n")
            sys.stdout.flush()
    result = {"steps": steps, "resumed_from": start, "done": done}
    sys.stdout.write(json.dumps({"job": job.get("job"), "result": result}) + "\n")
    sys.stdout.flush()
