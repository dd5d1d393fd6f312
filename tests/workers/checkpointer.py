#!/usr/bin/env python3
"""Test worker for precogd's black-box tests: works through "steps" steps (default 5), each
taking "step_ms" (default 0) of real sleep, emitting a checkpoint {"done": k} after each but the
last, then a result. Given a state {"done": k} it resumes after step k and says so in
"resumed_from"."""
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
