"""Example suite: each test sends its trace id to the API, so a failure leads to its trace."""

from __future__ import annotations

import logging
import time

import pytest
import requests

from pytest_taskctl import get_traceid, trace_headers

log = logging.getLogger("orders_tests")
STEP = 0.4  # each test "waits on the API" a little, so the demo can pause between tests


def test_create_order(api_url: str) -> None:
    response = requests.post(f"{api_url}/orders", json={"sku": "A-1"}, headers=trace_headers())
    log.info("created order %s", response.json()["id"])
    assert response.status_code == 201
    time.sleep(STEP)


def test_get_order(api_url: str, trace_headers: dict[str, str]) -> None:
    response = requests.get(f"{api_url}/orders/1", headers=trace_headers)
    assert response.json()["sku"] == "A-1"
    time.sleep(STEP)


def test_missing_order_is_404(api_url: str, traceid: str) -> None:
    response = requests.get(f"{api_url}/orders/999", headers={"X-Trace-Id": traceid})
    assert response.status_code == 404
    time.sleep(STEP)


@pytest.mark.parametrize("sku", ["B-2", "C-3", "D-4", "E-5", "F-6", "G-7", "H-8"])
def test_create_many(api_url: str, sku: str) -> None:
    response = requests.post(f"{api_url}/orders", json={"sku": sku}, headers=trace_headers())
    log.info("created %s as order %s (trace %s)", sku, response.json()["id"], get_traceid())
    assert response.status_code == 201
    time.sleep(STEP)
