"""Fixtures of the deployment tests; a run that collects too few tests fails."""

from __future__ import annotations

import pytest

import deploylib



def pytest_addoption(parser):
    parser.addoption("--min-tests", type=int, default=0,
                     help="fail when fewer tests are collected (scripts/test sets it, so a "
                          "lost test file cannot pass silently)")


def pytest_collection_modifyitems(session, config, items):
    minimum = config.getoption("--min-tests")
    if len(items) < minimum:
        raise pytest.UsageError(
            f"tests/deploy collected {len(items)} tests, expected at least {minimum}")


@pytest.fixture(scope="session")
def crd():
    return deploylib.the_crd()


@pytest.fixture(scope="session", params=deploylib.CI_VALUES, ids=lambda p: p.stem)
def values_file(request):
    return request.param


@pytest.fixture(scope="session")
def rendered_default():
    return deploylib.render({})


@pytest.fixture(scope="session")
def objects_default(rendered_default):
    return deploylib.objects_of(rendered_default)
