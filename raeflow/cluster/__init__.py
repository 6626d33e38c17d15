"""Running raeflow on a Ray cluster: the Jobs API client behind `raeflow submit` / `raeflow jobs`.

`auth.py` finds the cluster's token the way Ray's own tools do; `submit.py` talks to the head's
Jobs API with it and ships raeflow's code with every job. The entrypoints the jobs run live in
`jobs/` at the repository root; the cluster itself is described by `cluster.yaml`.
"""
