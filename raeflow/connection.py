"""How every raeflow command reaches Ray: one rule, one function.

The rule: `--address` (or `$RAY_ADDRESS`) joins that cluster; otherwise the command starts a
private local Ray of its own (`ray.init(address="local")`), even when another Ray (a `ray start`
head, a second raeflow command, a stale `/tmp/ray/ray_current_cluster`) is on the machine. Only a
private local Ray is sized by raeflow (`num_cpus`); a cluster that is joined keeps its resources.
Inside a job submitted with `raeflow submit`, Ray sets `$RAY_ADDRESS`, so the job joins its cluster.

An address that does not answer is a one-line `ClusterError` within `CONNECT_TIMEOUT_S`, before
anything is written. Ray's own log lines (Python loggers and the C++ core worker's stderr) go to
the session's log folder unless the console is verbose (`raeflow.console`). Workers import the
raeflow this driver imported, whatever the working folder holds (`worker_runtime_env`).
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import signal
import socket
import sys
import threading
from typing import Any

from raeflow import console
from raeflow.errors import ClusterError

CONNECT_TIMEOUT_S = 30.0
"""Longest wait for a cluster given by --address / $RAY_ADDRESS to accept this driver
(`$RAEFLOW_CONNECT_TIMEOUT_S` overrides it)."""
PROBE_TIMEOUT_S = 5.0
"""Longest wait for the address's TCP port to accept a connection at all."""
DRIVER_LOG = "raeflow-driver.log"
"""File in Ray's session log folder that receives the driver's Ray log lines when they are not shown."""
_OFF = logging.CRITICAL + 10
"""A handler level above every record: the handler stays, nothing passes."""
_QUIET_RAY_ENV = {
    "RAY_DATA_DISABLE_PROGRESS_BARS": "1",  # Ray Data's own bars / logging_progress blocks
    "RAY_TQDM": "0",
}
"""Environment that keeps Ray's own progress displays off (inherited by a private Ray's workers)."""


def resolve_address(address: str | None) -> str | None:
    """The cluster to join: `address`, else `$RAY_ADDRESS`; None (or "local") means a private local Ray."""
    address = (address or os.environ.get("RAY_ADDRESS") or "").strip()
    return None if address in ("", "local") else address


class _EarlyStart:
    """A private local Ray being started in a background thread (`start_local_early`).

    The thread stays alive until the process ends: Ray ties the life of the processes it starts
    (GCS, raylet) to the thread that started them, so a thread that returned would take them along.
    """

    def __init__(self, num_cpus: int | None, verbose: bool) -> None:
        self.error: BaseException | None = None
        self.ready = threading.Event()
        self.native = None if verbose else _NativeStderr.to_temp_file()
        atexit.register(self.stop)  # also when the command ends before it needed Ray
        self.thread = threading.Thread(
            target=self._run, args=(num_cpus, verbose), name="raeflow-start-ray", daemon=True
        )
        self.thread.start()

    def _run(self, num_cpus: int | None, verbose: bool) -> None:
        try:
            _start_and_route(None, num_cpus, verbose, self.native, None)
        except BaseException as err:  # noqa: BLE001 - handed to connect_ray in the main thread
            self.error = err
        finally:
            self.ready.set()
        threading.Event().wait()  # hold Ray's processes until the process exits

    def wait(self) -> None:
        """Wait until Ray is up; raise what stopped it from starting."""
        self.ready.wait()
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        """At exit: let a start in progress finish, then shut Ray down (no orphaned GCS or raylet)."""
        self.ready.wait()
        if self.error is None:
            import ray

            ray.shutdown()


_EARLY: _EarlyStart | None = None
EARLY_START = False
"""Whether `start_local_early` may start Ray: set by the `raeflow` program (`raeflow.cli.entry`)."""


def _quiet_ray_displays(verbose: bool) -> None:
    """Keep Ray's own progress displays off unless verbose (a private Ray's workers inherit this)."""
    if not verbose:
        for name, value in _QUIET_RAY_ENV.items():
            os.environ.setdefault(name, value)


def start_local_early(
    address: str | None, *, num_cpus: int | None = None, verbose: bool | None = None
) -> None:
    """Begin starting this command's private local Ray in the background; `connect_ray` waits for it.

    Ray's start (about 4 s) then overlaps the command's own loading (torch, the model, the listing).
    Only for the `raeflow` program (`raeflow.cli.entry`), only when no cluster is to be joined, and
    only when Ray is not up in this process: a command called inside another program starts nothing
    it was not asked for.
    """
    global _EARLY
    if not EARLY_START or _EARLY is not None or resolve_address(address) is not None:
        return
    if "ray" in sys.modules and sys.modules["ray"].is_initialized():
        return
    verbose = console.is_verbose() if verbose is None else verbose
    _quiet_ray_displays(verbose)
    if signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        # What ray.init does in the main thread: SIGTERM exits through the exit handlers (Ray's shutdown).
        signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    _EARLY = _EarlyStart(num_cpus, verbose)


def connect_ray(
    address: str | None = None,
    *,
    num_cpus: int | None = None,
    verbose: bool | None = None,
    timeout_s: float | None = None,
) -> None:
    """Join the Ray at `address` (else `$RAY_ADDRESS`), or start a private local one; no-op when connected.

    `num_cpus` sizes a private local Ray only (a cluster that is joined keeps its own resources).
    `verbose` (default: the console level) lets Ray's own log lines reach the console; otherwise
    they stay in Ray's log folder (`ray_log_dir()`). Raises `ClusterError` when the cluster at
    `address` cannot be reached within `timeout_s` (default `CONNECT_TIMEOUT_S`).
    """
    if _EARLY is not None:
        _EARLY.wait()
    import ray

    if ray.is_initialized():
        return
    verbose = console.is_verbose() if verbose is None else verbose
    target = resolve_address(address)
    _quiet_ray_displays(verbose)
    native = None if verbose else _NativeStderr.to_temp_file()
    _start_and_route(target, num_cpus, verbose, native, timeout_s)


def _start_and_route(
    target: str | None,
    num_cpus: int | None,
    verbose: bool,
    native: _NativeStderr | None,
    timeout_s: float | None,
) -> None:
    """Start a private Ray (`target` None) or join `target`; then keep Ray's lines off the console."""
    import ray.data  # sets up Ray Data's loggers, which are routed next

    _route_ray_logs(verbose)
    try:
        if target is None:
            _start_local(num_cpus, verbose=verbose)
        else:
            host_port = _gcs_host_port(target)
            if host_port is not None:
                _probe(target, *host_port)
            if timeout_s is None:
                timeout_s = float(os.environ.get("RAEFLOW_CONNECT_TIMEOUT_S", CONNECT_TIMEOUT_S))
            _join(target, verbose=verbose, timeout_s=timeout_s)
    except BaseException:
        if native is not None:
            native.discard()
        raise
    ray.data.DataContext.get_current().enable_progress_bars = False  # raeflow.progress shows progress
    _route_ray_logs(verbose)  # ray.init may have added handlers of its own
    if native is not None:
        _keep_ray_lines_in_log_folder(native)


def worker_runtime_env(target: str | None) -> dict[str, Any] | None:
    """What makes this driver's Ray workers import the raeflow it imported: a runtime env, or None.

    Ray puts the driver's working folder first on every worker's `sys.path`. A `raeflow` folder
    there without `__init__.py` (the clone itself, seen from the folder that holds it) is a
    namespace package, which wins over a package that is not on `sys.path` at all, as an editable
    install's is (a finder maps it). Naming the folder that holds this package on the workers'
    PYTHONPATH puts the regular package on their path, and Python prefers it to a namespace
    package. A working folder whose `raeflow` is another regular package or module would be
    imported before it, so it is refused (`ClusterError`). Not for a job submitted with code (its
    workers get the job's working_dir instead of the driver's folder), nor for `ray://` clients.
    """
    from ray._private.runtime_env.constants import RAY_JOB_CONFIG_JSON_ENV_VAR

    if RAY_JOB_CONFIG_JSON_ENV_VAR in os.environ or (target or "").startswith("ray://"):
        return None
    package = os.path.dirname(os.path.realpath(__file__))
    home = os.path.dirname(package)
    folder = os.getcwd()
    found = [name for name in ("raeflow", "raeflow.py") if os.path.exists(os.path.join(folder, name))]
    if not found or os.path.realpath(os.path.join(folder, found[0])) == package:
        return None
    shadow = os.path.join(folder, found[0])
    if found[0] == "raeflow.py" or os.path.exists(os.path.join(shadow, "__init__.py")):
        raise ClusterError(
            f"the working folder holds {shadow}, which Ray's workers would import instead of the raeflow "
            f"this command runs ({package}): run raeflow from another folder"
        )
    if any(os.path.realpath(entry or ".") == home for entry in sys.path):
        return None  # a regular package on the workers' path already wins over the namespace one
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([home, "${PYTHONPATH}"])}}


def check_reachable(address: str | None) -> None:
    """Raise `ClusterError` at once, without starting Ray, when the cluster to join cannot be reached.

    Commands call it while validating their settings, so an unreachable --address / $RAY_ADDRESS
    is refused before anything is written; a private local Ray (no address) always passes.
    """
    target = resolve_address(address)
    host_port = _gcs_host_port(target) if target else None
    if target and host_port is not None:
        _probe(target, *host_port)


def ray_log_dir() -> str | None:
    """The connected Ray session's log folder on this machine (None when not connected)."""
    import ray

    node = ray._private.worker._global_node
    if node is None:
        return None
    return os.path.join(node.get_session_dir_path(), "logs")


def _gcs_host_port(target: str) -> tuple[str, int] | None:
    """The host and port that must accept a TCP connection for `target` to work (None: Ray finds it)."""
    if target == "auto":
        from ray._private.services import canonicalize_bootstrap_address

        found = canonicalize_bootstrap_address("auto")
        if found is None:
            raise ClusterError(
                "--address auto: no Ray cluster was started on this machine with `ray start`; "
                "give its address (HOST:6379) or leave --address out for a private local Ray"
            )
        target = found
    elif target.startswith("ray://"):
        target = target[len("ray://") :]
    elif "://" in target:
        raise ClusterError(
            f"--address {target} is a web address (a dashboard / Jobs API): commands join a cluster by "
            "its GCS address, HOST:6379 (or ray://HOST:10001); `raeflow submit` takes the http:// one"
        )
    host, sep, port = target.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ClusterError(f"--address must look like HOST:PORT (e.g. 10.0.0.5:6379), got {target!r}")
    return host.strip("[]"), int(port)


def _probe(target: str, host: str, port: int) -> None:
    """Refuse at once an address where nothing listens (Ray itself would retry for ever)."""
    try:
        with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S):
            pass
    except OSError as err:
        reason = err.strerror or type(err).__name__
        raise ClusterError(
            f"cannot reach a Ray cluster at {target} ({reason}): is it up? Check --address / "
            "RAY_ADDRESS, or leave both out to run on a private local Ray"
        ) from None


def _start_local(num_cpus: int | None, *, verbose: bool) -> None:
    """Start this command's private local Ray; a failure to start is one line, not Ray's traceback."""
    import ray

    runtime_env = worker_runtime_env(None)
    try:
        ray.init(
            address="local",
            num_cpus=num_cpus,
            include_dashboard=False,
            log_to_driver=verbose,
            runtime_env=runtime_env,
        )
    except Exception as err:  # noqa: BLE001 - Ray raises bare Exceptions for startup failures
        lines = [line.strip() for line in str(err).splitlines() if line.strip()]
        raise ClusterError(
            f"could not start a local Ray: {lines[0] if lines else type(err).__name__} (is the machine "
            "out of memory or overloaded? Ray's logs: /tmp/ray/session_latest/logs)"
        ) from None


def _join(target: str, *, verbose: bool, timeout_s: float) -> None:
    """`ray.init(address=target)` bounded by `timeout_s` (Ray retries a silent GCS for ever)."""
    import ray

    outcome: dict[str, Any] = {}
    runtime_env = worker_runtime_env(target)

    def init() -> None:
        try:
            ray.init(address=target, log_to_driver=verbose, runtime_env=runtime_env)
        except BaseException as err:  # noqa: BLE001 - handed to the caller's thread
            outcome["error"] = err

    thread = threading.Thread(target=init, name="raeflow-connect", daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ClusterError(
            f"the Ray cluster at {target} did not accept this driver within {timeout_s:.0f} s: is that "
            "the cluster's GCS address (HOST:6379 by default) and the same Ray version?"
        )
    if "error" in outcome:
        lines = [line.strip() for line in str(outcome["error"]).splitlines() if line.strip()]
        raise ClusterError(
            f"cannot join the Ray cluster at {target}: {lines[0] if lines else outcome['error']!r}"
        )


def _is_console_handler(handler: logging.Handler) -> bool:
    """A handler that writes to the terminal (Ray's console handlers), not to a file."""
    if isinstance(handler, logging.FileHandler) or not isinstance(handler, logging.StreamHandler):
        return False
    stream = getattr(handler, "stream", None)
    return stream in (sys.stderr, sys.stdout, sys.__stderr__, sys.__stdout__) or type(handler).__name__ in (
        "PlainRayHandler",
        "_StderrHandler",
    )


def _route_ray_logs(verbose: bool) -> None:
    """Show Ray's Python log lines on the console only when verbose (their files keep them anyway)."""
    for name, logger in list(logging.Logger.manager.loggerDict.items()):
        if not isinstance(logger, logging.Logger) or not (name == "ray" or name.startswith("ray.")):
            continue
        for handler in logger.handlers:
            if _is_console_handler(handler):
                handler.setLevel(logging.NOTSET if verbose else _OFF)


class _NativeStderr:
    """File descriptor 2 pointed at a file, while `sys.stderr` keeps the terminal.

    Ray's C++ core worker writes its warning and error lines straight to descriptor 2 (the
    connection retries, "constructor arguments in the object store"); Python code keeps printing
    to the terminal through a duplicate of the original descriptor.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    @classmethod
    def to_temp_file(cls) -> _NativeStderr | None:
        """Start collecting descriptor 2 in a temporary file (None when stderr is not descriptor 2)."""
        try:
            if sys.stderr.fileno() != 2:
                return None
        except (AttributeError, OSError, ValueError):
            return None  # stderr is captured (tests): leave the process's descriptors alone
        import tempfile

        handle, path = tempfile.mkstemp(prefix=f"raeflow-{os.getpid()}-", suffix=".err")
        sys.stderr.flush()
        terminal = os.dup(2)
        os.dup2(handle, 2)
        os.close(handle)
        encoding = getattr(sys.stderr, "encoding", None) or "utf-8"
        sys.stderr = open(terminal, "w", buffering=1, encoding=encoding, errors="backslashreplace")  # noqa: SIM115
        return cls(path)

    def move_to(self, path: str) -> None:
        """Continue in `path` (appending what was collected so far), dropping the temporary file."""
        with open(self.path, "rb") as collected, open(path, "ab") as target:
            target.write(collected.read())
        moved = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.dup2(moved, 2)
        os.close(moved)
        os.unlink(self.path)
        self.path = path

    def discard(self) -> None:
        """Drop the temporary file (its lines only repeat the error raeflow reports)."""
        if os.path.basename(self.path).startswith("raeflow-"):
            with contextlib.suppress(OSError):
                os.unlink(self.path)


def _keep_ray_lines_in_log_folder(native: _NativeStderr) -> None:
    """Keep what Ray would print on this driver's console in files in Ray's session log folder.

    Python log records of the `ray` loggers go to `raeflow-driver.log`; the C++ core worker's
    lines on descriptor 2 to `raeflow-driver-<pid>.err`.
    """
    log_dir = ray_log_dir()
    if log_dir is None:
        return
    os.makedirs(log_dir, exist_ok=True)
    ray_logger = logging.getLogger("ray")
    path = os.path.join(log_dir, DRIVER_LOG)
    if not any(getattr(h, "baseFilename", None) == path for h in ray_logger.handlers):
        handler = logging.FileHandler(path)
        handler.setFormatter(logging.Formatter("%(asctime)s\t%(levelname)s %(name)s -- %(message)s"))
        ray_logger.addHandler(handler)
    native.move_to(os.path.join(log_dir, f"raeflow-driver-{os.getpid()}.err"))


def require_gpus(num_gpus: int = 1) -> None:
    """Say at once when the connected Ray has fewer GPUs than asked and nothing can add them.

    A private local Ray cannot grow: too few GPUs is a `ClusterError`. A cluster with an autoscaler
    may add GPU nodes: the wait is announced on stderr (the job then waits for them).
    """
    import ray

    have = int(ray.cluster_resources().get("GPU", 0))
    if have >= num_gpus:
        return
    if _has_autoscaler():
        if not console.is_quiet():
            print(
                f"waiting for the autoscaler to add GPU nodes: --gpu needs {num_gpus} GPU(s), the cluster "
                f"has {have} now (`ray status` on the head shows what is pending)",
                file=sys.stderr,
                flush=True,
            )
        return
    where = "this machine's private Ray" if _is_private() else "the Ray cluster"
    raise ClusterError(
        f"--gpu asks for {num_gpus} GPU(s) but {where} has {have} and no autoscaler to add any; "
        "drop --gpu to run on CPUs, or use a cluster with GPU nodes"
    )


def _is_private() -> bool:
    """Whether this driver started the Ray it is connected to."""
    import ray

    node = ray._private.worker._global_node
    return bool(node is not None and node.is_head())  # a joined cluster's head runs elsewhere


def _has_autoscaler() -> bool:
    """Whether an autoscaler that can launch nodes watches the connected cluster.

    The autoscaler publishes its status in the GCS key-value store. `ray start --head` without a
    launcher runs a read-only one whose node types are the running nodes themselves (`node_<id>`);
    only a cluster made by a launcher (`ray up cluster.yaml`, KubeRay) names node types it can add.
    """
    import json

    from ray._private.ray_constants import DEBUG_AUTOSCALING_STATUS
    from ray.experimental.internal_kv import _internal_kv_get

    if _is_private():
        return False
    try:
        raw = _internal_kv_get(DEBUG_AUTOSCALING_STATUS)
        report = json.loads(raw).get("autoscaler_report", {}) if raw else {}
    except Exception:  # noqa: BLE001 - no readable status: nothing is known to add nodes
        return False
    node_types = set(report.get("active_nodes", {})) | set(report.get("idle_nodes", {}) or {})
    node_types |= {launch for launch in report.get("pending_launches", {}) or {}}
    return any(not str(name).startswith("node_") for name in node_types)
