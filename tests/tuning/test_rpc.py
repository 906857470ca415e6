"""Measuring through TVM's RPC tracker: a tracker and two servers on 127.0.0.1 serve a short tuning job."""

import os
import signal
import socket
import subprocess
import sys
import time

import pytest

from convopt.target import resolve_target
from convopt.tuning.job import tune
from convopt.tuning.records import open_database, records_dir, trials_done
from convopt.tuning.tasks import extract_tasks

KEY = "convopt-test"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _servers_registered(port: int, count: int) -> bool:
    from tvm import rpc

    try:
        summary = rpc.connect_tracker("127.0.0.1", port).summary()
    except Exception:  # noqa: BLE001 - not up yet
        return False
    return sum(1 for server in summary.get("server_info", []) if server["key"].endswith(KEY)) >= count


@pytest.fixture
def tracker():
    # each in its own process group, killed whole: a server runs its sessions in worker processes of its own
    # (tvm.exec.popen_worker, ~700 MB each), which killing the server alone leaves running
    port = _free_port()
    processes = [subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_tracker", "--host", "127.0.0.1", "--port",
                                   str(port), "--port-end", str(port + 1), "--silent"], start_new_session=True)]
    time.sleep(1)
    for _ in range(2):
        processes.append(subprocess.Popen([sys.executable, "-m", "tvm.exec.rpc_server", "--host", "127.0.0.1",
                                           "--tracker", f"127.0.0.1:{port}", "--key", KEY, "--silent"],
                                          start_new_session=True))
    try:
        deadline = time.time() + 120
        while not _servers_registered(port, 2):
            assert time.time() < deadline, "the RPC servers did not register with the tracker"
            time.sleep(0.5)
        yield port
    finally:
        for p in processes:
            try:
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:  # the group has exited already
                pass
            p.wait()


def test_a_short_job_measures_through_the_tracker(tiny, tmp_path, tracker):
    model, x = tiny
    summary = tune(model, x, trials=3, log_dir=tmp_path, lowering="direct", rpc=f"127.0.0.1:{tracker}:{KEY}",
                   progress=False)
    assert summary.untuned_ms is None  # the end-to-end time would be this machine's, not the servers'
    target = resolve_target("cpu")
    database = open_database(target, tmp_path)
    assert (records_dir(target, tmp_path) / "database_tuning_record.json").is_file()
    import convopt

    graph = convopt.optimize(model, x, lowering="direct", tuning_logs=False, check=False).graph
    for task in extract_tasks(graph, target):
        assert trials_done(database, task.workload) >= 1
    assert all(t.default_us < 1e6 for t in summary.tasks)  # measured, not failed (FAILED is 1e10 s)
