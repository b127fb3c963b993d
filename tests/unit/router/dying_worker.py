"""A router worker that says why it fails and exits at once, its last line with no newline,
leaving a process that holds its standard error a while longer (as a child it started might):
tests/unit/router/test_workers.py runs it in the real worker's place."""

import subprocess
import sys

# holds the pipe past the daemon's wait for its end (workers.LAST_WORDS), then exits by itself
subprocess.Popen([sys.executable, "-c", "import time; time.sleep(2.5)", "dying-worker-child"])
sys.stderr.write("starting\nTraceback (most recent call last):\n")
sys.stderr.write("ValueError: the reason it ended")
sys.stderr.flush()
sys.exit(1)
