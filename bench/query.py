"""Timings of filtered reads and of batch creation, for run.py's figures.

A filtered page is timed against an unfiltered page from the same cursors, so the
ratio says what the filter costs; the cursors are spread over the table, so no
figure rests on its first page alone. Users are created one CreateUser after
another (one client, one call at a time, as an import script without batches would)
and in BatchCreateUsers calls of 500, in alternation.
"""

from __future__ import annotations

import statistics
import time

import grpc
from memstore.v1 import users_pb2, users_pb2_grpc

# A metadata equality that 1% of the benchmark's users match (run.py gives each a cohort 0-99).
ONE_PERCENT = "metadata.cohort = 7"
PAGE = 100  # ListUsers' default page
BATCH = 500


def page_ms(target: str, users: int, filter_text: str, samples: int = 30) -> float:
    """Median ms of one ListUsers page of PAGE users (matching ``filter_text``), from ``samples``
    cursors spread evenly over the first 90% of the table's ids (so every page is full)."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        times = []
        for sample in range(samples):
            cursor = sample * (users * 9 // 10) // samples
            request = users_pb2.ListUsersRequest(limit=PAGE, cursor=cursor, filter=filter_text)
            started = time.perf_counter()
            response = stub.ListUsers(request, timeout=60)
            times.append(time.perf_counter() - started)
            if len(response.users) != PAGE:
                raise RuntimeError(
                    f"a page of {len(response.users)} users for {filter_text!r} after {cursor}"
                )
    return statistics.median(times) * 1000


def count_ms(target: str, filter_text: str, samples: int = 10) -> tuple[float, int]:
    """Median ms of a CountUsers with ``filter_text``, and the count."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        times, counted = [], 0
        for _ in range(samples):
            started = time.perf_counter()
            counted = stub.CountUsers(users_pb2.CountUsersRequest(filter=filter_text), timeout=120).count
            times.append(time.perf_counter() - started)
    return statistics.median(times) * 1000, counted


def _request(user_id: str) -> users_pb2.CreateUserRequest:
    return users_pb2.CreateUserRequest(
        user_id=user_id,
        email=f"{user_id}@example.com",
        first_name="First",
        last_name="Last",
        metadata=_METADATA,
    )


def one_by_one_per_second(target: str, prefix: str, count: int = BATCH) -> float:
    """Users/s created by ``count`` CreateUser calls, each sent when the one before it answered."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        requests = [_request(f"{prefix}-{n}") for n in range(count)]
        started = time.perf_counter()
        for request in requests:
            stub.CreateUser(request, timeout=60)
        return count / (time.perf_counter() - started)


def batched_per_second(target: str, prefix: str, batches: int = 4) -> float:
    """Users/s created by ``batches`` BatchCreateUsers calls of BATCH users each, one after another."""
    with grpc.insecure_channel(target) as channel:
        stub = users_pb2_grpc.UserServiceStub(channel)
        calls = [
            users_pb2.BatchCreateUsersRequest(requests=[_request(f"{prefix}-{b}-{n}") for n in range(BATCH)])
            for b in range(batches)
        ]
        started = time.perf_counter()
        for call in calls:
            created = stub.BatchCreateUsers(call, timeout=120)
            if len(created.users) != BATCH:
                raise RuntimeError(f"a batch created {len(created.users)} of {BATCH} users")
        return batches * BATCH / (time.perf_counter() - started)


_METADATA = users_pb2.CreateUserRequest().metadata
_METADATA.update({"plan": "pro", "tags": ["a", "b"]})
