"""Several worker processes on one port: calls spread over them, metrics summed, one clean exit."""

from __future__ import annotations

import re
import time
import urllib.request
from pathlib import Path

import grpc
import pytest
from memstore.v1 import users_pb2, users_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from tests.support import TIMEOUT, as_url, free_port, run_command, running, unique, wait_until_serving

pytestmark = pytest.mark.process


def _handled_ok(url: str, method: str) -> float:
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        text = response.read().decode()
    return sum(
        sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
        if sample.name == "grpc_server_handled_total"
        and sample.labels.get("grpc_method") == method
        and sample.labels.get("grpc_code") == "OK"
    )


def test_two_workers_share_the_port_and_the_metrics(database_url: str, tmp_path: Path) -> None:
    target = f"127.0.0.1:{free_port()}"
    metrics_listen = f"127.0.0.1:{free_port()}"
    args = [
        "serve",
        "--database-url",
        as_url(database_url),
        "--listen",
        target,
        "--workers",
        "2",
        "--metrics-listen",
        metrics_listen,
        "--grace-period",
        "2",
    ]
    calls = 40
    with running(args, tmp_path) as process:
        wait_until_serving(process, target)
        user_id = unique("worked")
        with grpc.insecure_channel(target) as channel:
            users_pb2_grpc.UserServiceStub(channel).CreateUser(
                users_pb2.CreateUserRequest(user_id=user_id), timeout=TIMEOUT
            )
        for number in range(calls):
            # A new connection each time, so the kernel may hand it to either worker.
            with grpc.insecure_channel(target, options=[("grpc.channel_id", number)]) as channel:
                users_pb2_grpc.UserServiceStub(channel).GetUser(
                    users_pb2.GetUserRequest(user_id=user_id), timeout=TIMEOUT
                )
        deadline = time.monotonic() + 5
        counted = 0.0
        while time.monotonic() < deadline and counted < calls:
            counted = _handled_ok(f"http://{metrics_listen}/metrics", "GetUser")
            time.sleep(0.1)
        process.terminate()
        exit_code = process.wait_for_exit(15)
        log = process.log()
    assert exit_code == 0, log
    assert counted == calls, f"the supervisor's metrics counted {counted} of {calls} calls"
    serving_pids = set(
        re.findall(r"memstore_server\.access\[(\d+)\]: /memstore\.v1\.UserService/GetUser OK", log)
    )
    assert len(serving_pids) == 2, f"calls were served by processes {serving_pids}"
    assert log.count("stopped") >= 2


def test_workers_need_a_fixed_port() -> None:
    result = run_command(["serve", "--workers", "2", "--listen", "127.0.0.1:0"])
    assert result.returncode == 2
    assert "fixed port" in result.stderr
