"""The `raeflow` command line: parse options, build a settings object, call one library function.

Each command lives in `raeflow/commands/<area>.py`; this module only assembles the group and turns
user mistakes (`RaeflowError`) into a one-line error with exit code 2.

    raeflow --help
"""

from __future__ import annotations

import atexit
import gc
import os
import sys
import threading
from typing import NoReturn

import click

from raeflow import __version__, connection, console
from raeflow.errors import RaeflowError


class _Group(click.Group):
    """A click group that reports user mistakes, its own usage errors included, in one line."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        console.set_level("normal")  # each run chooses its own (tests run many in one process)
        prog_name = prog_name or "raeflow"
        if not standalone_mode:
            return super().main(args, prog_name, complete_var, standalone_mode, **extra)
        try:
            result = super().main(args, prog_name, complete_var, standalone_mode=False, **extra)
        except click.UsageError as err:
            if type(err).__name__ == "NoArgsIsHelpError" and err.ctx is not None:
                click.echo(err.ctx.get_help())  # a bare `raeflow` or `raeflow jobs`: the help, not an error
                sys.exit(0)
            command = err.ctx.command_path if err.ctx is not None else "raeflow"
            click.echo(f"error: {_one_line(err.format_message())} (see `{command} --help`)", err=True)
            sys.exit(2)
        except click.ClickException as err:
            click.echo(f"error: {_one_line(err.format_message())}", err=True)
            sys.exit(err.exit_code)
        except click.Abort as err:
            click.echo(_aborted(err), err=True)
            sys.exit(130)
        sys.exit(result if isinstance(result, int) else 0)

    def invoke(self, ctx: click.Context):  # type: ignore[override]
        try:
            return super().invoke(ctx)
        except RaeflowError as err:
            click.echo(f"error: {_one_line(str(err))}", err=True)
            sys.exit(2)
        except (click.ClickException, click.exceptions.Exit, click.Abort):
            raise  # usage errors and exits: `main` says them in one line, no crash pointer
        except Exception:
            _point_at_ray_logs()
            raise


def _aborted(err: click.Abort) -> str:
    """`aborted`, and what a job stopped by Ctrl-C has committed and how to resume it, when it said."""
    from raeflow.progress import JobInterrupted

    cause = err.__cause__ or err.__context__
    return f"aborted: {cause.message}" if isinstance(cause, JobInterrupted) else "aborted"


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _point_at_ray_logs() -> None:
    """After a crash, say where Ray's own logs of this run are (they are not on the console)."""
    import sys as _sys

    if "ray" not in _sys.modules:
        return
    from raeflow.connection import ray_log_dir

    folder = ray_log_dir()
    if folder:
        click.echo(f"Ray's logs of this run: {folder}", err=True)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="raeflow")
def main() -> None:
    """Train convolutional autoencoders with Ray Train and stream image shards through them with Ray Data.

    \b
    Typical flow:
      raeflow train   --data builtin:mnist --model conv --out runs/mnist
      raeflow embed   --data s3://bucket/images --model runs/mnist/model --out s3://bucket/emb
      raeflow denoise --data ./scans --model runs/photos/model --out ./scans-clean
      raeflow report  --data builtin:mnist --model runs/mnist/model --out report/
    """


def _register() -> None:
    # Imported here so `raeflow --help` stays fast: heavy imports (torch, ray) live inside commands.
    from raeflow.commands import batch, cluster, curate, demo, models, report, shard, train

    for module in (models, shard, train, batch, report, curate, cluster, demo):
        for command in module.COMMANDS:
            main.add_command(command)


_register()


def entry() -> NoReturn:
    """The `raeflow` program: `main`, then an exit that skips freeing the imported modules.

    Once a command has returned (its files closed, its summary printed), the exit handlers run as at
    any exit: Ray's shutdown, log handlers, temporary files. Only the interpreter's teardown of its
    modules is skipped (`os._exit`): with torch and Ray loaded it took 1.2 s after every command.
    A crash (any exception but `SystemExit`) exits the usual way, traceback included.
    """
    connection.EARLY_START = True  # a command may start its private Ray while it loads (not in tests)
    code: object = 0
    try:
        main()
    except SystemExit as done:
        code = done.code
    _exit_now(code)  # outside `except`: the error that led to the exit, and its frames, are garbage now


def _exit_now(code: object) -> NoReturn:
    """Exit with `code` (what `sys.exit` takes) after doing what the interpreter does at exit."""
    if isinstance(code, str):
        print(code, file=sys.stderr)
    status = 0 if code is None else code if isinstance(code, int) else 1
    for thread in threading.enumerate():  # the interpreter waits for non-daemon threads too
        if thread is not threading.current_thread() and not thread.daemon:
            thread.join()
    ray = sys.modules.get("ray")
    if ray is not None and ray.is_initialized():
        # Free the job's garbage (a failed job's frames hold Ray Data iterators and object refs) while
        # Ray is still connected: collected after the shutdown below, by Ray's own GC thread, their
        # finalisers reach the stopped core worker, which ends the process with status 1.
        gc.collect()
    if ray is not None and ray.is_initialized() and not console.is_verbose():
        ray.shutdown()  # Ray's own exit handler first sleeps 0.5 s for late lines, which go to its logs here
    atexit._run_exitfuncs()  # CPython's own exit handlers, run as the interpreter would
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(status)


if __name__ == "__main__":
    entry()
