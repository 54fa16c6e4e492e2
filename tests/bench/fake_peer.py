"""A peer worker that hangs and leaves a grandchild (as vLLM does its engine core), for the launcher test."""

import subprocess
import sys
import time
from pathlib import Path

if __name__ == "__main__":
    grandchild = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(600)"])
    Path(sys.argv[3]).write_text(str(grandchild.pid))
    time.sleep(600)
