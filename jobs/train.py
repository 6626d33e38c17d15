"""Ray job entrypoint for `raeflow train`: same options, same library call.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/train.py --data s3://b/images --model conv --out s3://b/runs/conv --workers 8 --gpu

`raeflow submit train -- ARGS...` submits exactly this (and finds the cluster's token without
RAY_AUTH_MODE). The options are those of `raeflow train --help`: this file runs that very click
command, so the two never drift apart. Paths are read on the cluster: use a bucket.
"""

import sys

from raeflow.cli import main

if __name__ == "__main__":
    main(args=["train", *sys.argv[1:]], prog_name="raeflow")
