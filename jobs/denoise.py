"""Ray job entrypoint for `raeflow denoise`: same options, same library call.

    RAY_AUTH_MODE=token ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python jobs/denoise.py --data s3://bucket/scans --model s3://bucket/runs/unet/model --out s3://bucket/scans-clean

`raeflow submit denoise -- ARGS...` submits exactly this (and finds the cluster's token without
RAY_AUTH_MODE). The options are those of `raeflow denoise --help`: this file runs that very click
command, so the two never drift apart. Paths are read on the cluster: use a bucket.
"""

import sys

from raeflow.cli import main

if __name__ == "__main__":
    main(args=["denoise", *sys.argv[1:]], prog_name="raeflow")
