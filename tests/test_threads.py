"""Thread count: --threads > PRIVLAB_THREADS > the load-aware automatic choice."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from privlab import threads
from privlab.errors import PrivlabError


@pytest.fixture(autouse=True)
def clean(monkeypatch):
    """No PRIVLAB_THREADS from the caller; torch's thread count and the report restored."""
    monkeypatch.delenv(threads.ENV_VAR, raising=False)
    monkeypatch.setattr(threads, "_chosen_by", None)
    before = torch.get_num_threads()
    yield
    torch.set_num_threads(before)


def fake_machine(monkeypatch, load: float, cores: int, runnable_others: int = 0) -> None:
    monkeypatch.setattr(os, "getloadavg", lambda: (load, load, load))
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(cores)), raising=False)
    monkeypatch.setattr(threads, "_runnable_others", lambda: runnable_others)


def test_explicit_beats_env_beats_auto(monkeypatch):
    fake_machine(monkeypatch, load=0.0, cores=8)
    monkeypatch.setenv(threads.ENV_VAR, "3")
    assert threads.resolve_threads(2) == 2
    assert threads.resolve_threads("5") == 5
    assert threads.resolve_threads() == 3
    monkeypatch.setenv(threads.ENV_VAR, "")  # empty means unset
    assert threads.resolve_threads() == threads.MAX_AUTO_THREADS


def test_explicit_auto_ignores_env(monkeypatch):
    fake_machine(monkeypatch, load=8.0, cores=2)
    monkeypatch.setenv(threads.ENV_VAR, "2")
    assert threads.resolve_threads("auto") == 1


@pytest.mark.parametrize("text, expected", [("1", 1), (" 4 ", 4), ("AUTO", 1)])
def test_env_parsing(monkeypatch, text, expected):
    fake_machine(monkeypatch, load=8.0, cores=2)  # so auto gives 1
    monkeypatch.setenv(threads.ENV_VAR, text)
    assert threads.resolve_threads() == expected


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "1.5", 0, -1, 1.5, True])
def test_bad_requested(bad):
    with pytest.raises(PrivlabError, match=r"--threads must be an integer >= 1 or auto"):
        threads.resolve_threads(bad)


@pytest.mark.parametrize("bad", ["0", "-1", "abc", "1.5"])
def test_bad_env(monkeypatch, bad):
    monkeypatch.setenv(threads.ENV_VAR, bad)
    with pytest.raises(PrivlabError) as error:
        threads.resolve_threads()
    assert str(error.value) == f"PRIVLAB_THREADS must be an integer >= 1 or auto, got {bad!r}"


def test_configure_sets_torch_and_reports():
    assert threads.configure_threads(1) == 1
    assert torch.get_num_threads() == 1
    assert threads.configure_threads(2) == 2
    assert torch.get_num_threads() == 2
    report = threads.thread_report()
    assert report["threads"] == 2
    assert report["chosen_by"] == "--threads"


def test_report_names_env_and_auto(monkeypatch):
    fake_machine(monkeypatch, load=1.5, cores=2)
    assert threads.thread_report()["chosen_by"] == "torch default"
    threads.configure_threads()
    assert threads.thread_report()["chosen_by"] == "auto (load 1.50 on 2 cores)"
    monkeypatch.setenv(threads.ENV_VAR, "1")
    threads.configure_threads()
    report = threads.thread_report()
    assert (report["threads"], report["chosen_by"]) == (1, "PRIVLAB_THREADS")


def test_auto_is_one_under_high_load(monkeypatch):
    fake_machine(monkeypatch, load=16.0, cores=8)
    assert threads.resolve_threads() == 1


def test_auto_is_one_when_tasks_are_runnable_now(monkeypatch):
    fake_machine(monkeypatch, load=0.0, cores=2, runnable_others=2)  # a job that just started
    assert threads.resolve_threads() == 1


def test_auto_uses_free_cores_on_an_idle_machine(monkeypatch):
    fake_machine(monkeypatch, load=0.1, cores=4)
    assert threads.resolve_threads() == 2
    fake_machine(monkeypatch, load=0.0, cores=2)  # one core left to the system
    assert threads.resolve_threads() == 1
    fake_machine(monkeypatch, load=0.0, cores=64)
    assert threads.resolve_threads() == threads.MAX_AUTO_THREADS


def run_python(code: str, **env: str) -> str:
    environ = {k: v for k, v in os.environ.items() if k != "OMP_WAIT_POLICY"} | env
    done = subprocess.run([sys.executable, "-c", code], env=environ, capture_output=True)
    return done.stdout.decode().strip()


PREPARE = (
    "import os\nfrom privlab.threads import prepare_environment\n"
    "print(prepare_environment(), os.environ.get('OMP_WAIT_POLICY'))"
)


def test_prepare_environment_sets_passive_before_torch():
    assert run_python(PREPARE) == "True PASSIVE"
    assert run_python(PREPARE, OMP_WAIT_POLICY="ACTIVE") == "False ACTIVE"  # the user's choice


def test_prepare_environment_does_nothing_after_torch():
    assert run_python("import torch\n" + PREPARE) == "False None"
