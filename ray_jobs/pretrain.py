"""Entry point for `ray job submit --working-dir . -- python ray_jobs/pretrain.py [lethe flags]`.

Inside a Ray job RAY_ADDRESS is set, so lethe joins that cluster instead of starting one.
"""

import sys
from pathlib import Path

# `python ray_jobs/x.py` puts ray_jobs/ on sys.path, not the uploaded working dir that holds lethe/:
# add it, so the job runs the code that was submitted (not whatever lethe the image has installed).
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lethe.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
