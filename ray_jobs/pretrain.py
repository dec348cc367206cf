"""Entry point for `ray job submit --working-dir . -- python ray_jobs/pretrain.py [lethe flags]`.

Inside a Ray job RAY_ADDRESS is set, so lethe joins that cluster instead of starting one.
"""

import sys

from lethe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pretrain", *sys.argv[1:]]))
