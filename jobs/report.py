"""Ray job entrypoint for `raeflow report`: same options, same library call.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/report.py --data s3://bucket/images --model s3://bucket/runs/conv/model --out s3://bucket/report

`raeflow submit report -- ARGS...` submits exactly this (and finds the cluster's token without
RAY_AUTH_MODE). The options are those of `raeflow report --help`: this file runs that very click
command, so the two never drift apart. Paths are read on the cluster: use a bucket.
"""

import sys

from raeflow.cli import main

if __name__ == "__main__":
    main(args=["report", *sys.argv[1:]], prog_name="raeflow")
