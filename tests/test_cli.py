"""The painhelm command line: help for every subcommand, user mistakes without tracebacks."""

import subprocess
import sys

import pytest

from painhelm.host_tools.cli import COMMANDS, main


def _run(*args):
    return subprocess.run([sys.executable, "-m", "painhelm.host_tools.cli", *args],
                          capture_output=True, text=True, timeout=120)


def test_help_lists_every_subcommand():
    """`painhelm --help` names each subcommand with its help line."""
    out = _run("--help").stdout
    for name in COMMANDS:
        assert name in out
    assert "demo" in out and "flash" in out


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_has_help(name, capsys):
    """`painhelm NAME --help` prints its own description and exits 0."""
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    assert COMMANDS[name][2] in " ".join(capsys.readouterr().out.split())


def test_no_such_port_is_one_clear_line():
    """A port that does not exist gives `painhelm: ...` on stderr, exit 1, no traceback."""
    r = _run("info", "--port", "/dev/does-not-exist", "--timeout", "1")
    assert r.returncode == 1
    assert r.stderr.startswith("painhelm: ") and "/dev/does-not-exist" in r.stderr
    assert "Traceback" not in r.stderr


def test_flash_missing_bundle_is_clear():
    """Flashing a bundle folder that does not exist names the folder."""
    r = _run("flash", "--port", "/dev/does-not-exist", "--bundle", "/nonexistent/bundle")
    assert r.returncode == 1 and "Traceback" not in r.stderr and "/nonexistent/bundle" in r.stderr


def test_demo_rejects_bad_arguments():
    """Nonsense demo arguments are refused before any work starts."""
    r = _run("demo", "--subjects", "1")
    assert r.returncode == 1 and "--subjects" in r.stderr and "Traceback" not in r.stderr
