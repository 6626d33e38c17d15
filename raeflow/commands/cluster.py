"""`raeflow submit` and `raeflow jobs`: run raeflow commands as Ray jobs on a cluster.

raeflow submit embed --wait -- --data s3://bucket/images --model s3://bucket/model --out s3://bucket/emb
raeflow jobs list
raeflow jobs logs raeflow-embed-1a2b3c4d --follow
"""

from __future__ import annotations

import sys
from datetime import datetime

import click

from raeflow.cluster.submit import JOBS

ADDRESS_HELP = (
    "Jobs API of the cluster's head, e.g. http://127.0.0.1:8265 through `ray dashboard cluster.yaml`; "
    "default: $RAY_API_SERVER_ADDRESS, else $RAY_ADDRESS, else http://127.0.0.1:8265."
)

address_option = click.option("--address", default=None, metavar="URL", help=ADDRESS_HELP)


@click.command("submit")
@click.argument("job", type=click.Choice(JOBS))
@click.argument("args", nargs=-1, type=click.UNPROCESSED, metavar="-- ARGS...")
@address_option
@click.option("--wait", is_flag=True, help="Follow the job's logs and exit with its outcome.")
@click.option(
    "--no-code",
    is_flag=True,
    help="Run the raeflow installed on the cluster instead of shipping this one with the job.",
)
def submit(job: str, args: tuple[str, ...], address: str | None, wait: bool, no_code: bool) -> None:
    """Run `raeflow JOB ARGS...` as a Ray job on a cluster and print its id.

    JOB is train, embed, denoise or report; everything after `--` goes to that command unchanged.
    The job carries this raeflow's code (unless --no-code), so the cluster runs exactly the
    version that submitted it. Requests carry the cluster's token from $RAY_AUTH_TOKEN,
    $RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token. Paths in ARGS are read on the cluster: use a bucket
    (s3://...) or storage every node shares, not this machine's disk.

    \b
      raeflow submit embed --wait -- --data s3://b/images --model s3://b/model --out s3://b/emb
    """
    from raeflow.cluster.submit import RETRY_FOR_S, ClusterClient, raise_unless_succeeded

    client = ClusterClient(address, retry_for_s=RETRY_FOR_S)
    job_id = client.submit(job, list(args), ship_code=not no_code)
    click.echo(job_id)
    click.echo(f"submitted {job} to {client.address}; logs: raeflow jobs logs {job_id} --follow", err=True)
    if not wait:
        return
    try:
        info = client.follow(job_id, sys.stdout)
    except KeyboardInterrupt:
        click.echo(f"\nstopped following; the job goes on (raeflow jobs stop {job_id} ends it)", err=True)
        sys.exit(130)
    raise_unless_succeeded(job_id, info)
    click.echo(f"job {job_id} succeeded", err=True)


@click.group("jobs")
def jobs() -> None:
    """List the cluster's jobs, show one's status or logs, stop one."""


@jobs.command("list")
@address_option
def list_jobs(address: str | None) -> None:
    """Every job the cluster knows: id, status, start time, command."""
    from raeflow.cluster.submit import ClusterClient

    rows = ClusterClient(address).list()
    if not rows:
        click.echo("no jobs")
        return
    for details in rows:
        job_id = details.submission_id or details.job_id or "?"
        started = (
            datetime.fromtimestamp(details.start_time / 1000).strftime("%Y-%m-%d %H:%M:%S")
            if details.start_time
            else "-"
        )
        command = details.entrypoint if len(details.entrypoint) <= 70 else details.entrypoint[:67] + "..."
        click.echo(f"{job_id:<26} {details.status!s:<10} {started}  {command}")


@jobs.command("status")
@click.argument("job_id")
@address_option
def status(job_id: str, address: str | None) -> None:
    """The job's status and, when it has ended, its message."""
    from raeflow.cluster.submit import ClusterClient

    info = ClusterClient(address).status(job_id)
    click.echo(f"{job_id}: {info.status}")
    if info.message:
        click.echo(info.message.strip())


@jobs.command("logs")
@click.argument("job_id")
@address_option
@click.option("--follow", "-f", is_flag=True, help="Keep printing until the job ends; exit with its outcome.")
def logs(job_id: str, address: str | None, follow: bool) -> None:
    """What the job printed (its progress lines, summary or error)."""
    from raeflow.cluster.submit import ClusterClient, raise_unless_succeeded

    client = ClusterClient(address)
    if follow:
        raise_unless_succeeded(job_id, client.follow(job_id, sys.stdout))
    else:
        click.echo(client.logs(job_id), nl=False)


@jobs.command("stop")
@click.argument("job_id")
@address_option
def stop(job_id: str, address: str | None) -> None:
    """Stop a running job (its finished shards stay; a rerun of the same command resumes)."""
    from raeflow.cluster.submit import ClusterClient

    stopped = ClusterClient(address).stop(job_id)
    click.echo(f"{job_id}: {'stopping' if stopped else 'had already ended'}")


COMMANDS: list[click.Command] = [submit, jobs]
