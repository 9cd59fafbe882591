"""The ``probe`` command as a user meets it: a fast ``--help`` (nothing heavy imported), ``--version``,
help text on every option, ``probe bench --quick`` passed through, a readable ``probe zoo list``,
the explorer served on this machine only unless asked, without usage statistics."""
from __future__ import annotations

import argparse
import subprocess
import sys
from pathlib import Path

import pytest

import probe
from probe import cli

ROOT = Path(__file__).resolve().parents[1]


def test_help_and_version_import_neither_torch_nor_pandas():
    code = ("import sys, contextlib, io\nfrom probe import cli\n"
            "for argv in (['--help'], ['--version']):\n"
            "    with contextlib.redirect_stdout(io.StringIO()) as out, contextlib.suppress(SystemExit):\n"
            "        cli.main(argv)\n"
            "    print(out.getvalue().splitlines()[0])\n"
            "print(sorted(m for m in ('torch', 'pandas', 'transformer_lens', 'numpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True).stdout
    usage, version, heavy = out.splitlines()
    assert usage.startswith("usage: probe") and version == f"probe {probe.__version__}"
    assert heavy == "[]"


def test_the_public_api_is_unchanged_by_lazy_imports():
    import probe.cache
    import probe.model

    for name in probe.__all__:
        assert getattr(probe, name) is not None and name in dir(probe)
    assert probe.HookedLM is probe.model.HookedLM and probe.ActivationCache is probe.cache.ActivationCache
    assert probe.methods.logit_lens is not None  # submodules resolve as attributes
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        probe.nope


def _actions(parser: argparse.ArgumentParser, path: str = "probe"):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                yield from _actions(sub, f"{path} {name}")
        elif not isinstance(action, (argparse._HelpAction, argparse._VersionAction)):
            yield path, action


def test_every_option_has_help_text():
    missing = [f"{path} {action.option_strings or action.dest}" for path, action in _actions(cli.build_parser())
               if not action.help]
    assert not missing


def test_a_command_builds_only_its_own_options_and_lists_the_others():
    parser = cli.build_parser("explore")
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert list(sub.choices) == ["train", "zoo", "data", "harvest", "bench", "explore"]
    assert "--network" in sub.choices["explore"]._option_string_actions
    assert "--steps" not in sub.choices["train"]._option_string_actions  # listed only: its defaults import torch


@pytest.mark.parametrize("argv", [["bench", "--quick", "--suite", "bench_model"],
                                  ["bench", "--", "--quick", "--suite", "bench_model"]])
def test_bench_passes_its_arguments_on_with_or_without_the_separator(monkeypatch, capsys, argv):
    sys.path.insert(0, str(ROOT))
    from benchmarks import run as bench_run

    calls = []
    monkeypatch.setattr(bench_run, "main", lambda args: calls.append(args) or "done")
    assert cli.main(argv) == 0
    assert calls == [["--quick", "--suite", "bench_model"]]


@pytest.mark.skipif(not probe.zoo_names(), reason="needs the zoo")
def test_zoo_list_is_a_readable_summary_with_each_models_trained_context(capsys):
    assert cli.main(["zoo", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert max(len(line) for line in lines) <= 105
    assert lines[0].split()[:5] == ["model", "layout", "params", "val", "bpb"] and "context" in lines[0]
    rows = [line for line in lines[2:] if line.split()[:1] and line.split()[0] in probe.zoo_names()]
    assert len(rows) == len(probe.zoo_names()) and all("256 B" in row for row in rows)
    assert cli.main(["zoo", "list", "--markdown"]) == 0
    assert capsys.readouterr().out.startswith("| model | layout |")


@pytest.mark.parametrize("flags, address", [([], "localhost"), (["--network"], "0.0.0.0")])
def test_explore_serves_locally_without_usage_statistics_unless_asked(monkeypatch, flags, address):
    calls = []
    monkeypatch.setattr(subprocess, "call", lambda cmd: calls.append(cmd) or 0)
    assert cli.main(["explore", *flags]) == 0
    cmd = calls[0]
    assert cmd[cmd.index("--server.address") + 1] == address
    assert cmd[cmd.index("--browser.gatherUsageStats") + 1] == "false"


def test_streamlit_project_config_and_dev_script_serve_locally_without_usage_statistics():
    """Streamlit reads .streamlit/config.toml from the repository root (where dev.sh and probe explore run it):
    localhost only and no usage statistics; dev.sh passes the same flags, --network opens it to the network."""
    import tomllib

    config = tomllib.loads((ROOT / ".streamlit" / "config.toml").read_text())
    assert config["server"]["address"] == "localhost" and config["browser"]["gatherUsageStats"] is False
    out = subprocess.run([sys.executable, "-m", "streamlit", "config", "show"], capture_output=True, text=True,
                         cwd=ROOT, check=True).stdout
    assert 'address = "localhost"' in out and "gatherUsageStats = false" in out
    dev = (ROOT / "scripts" / "dev.sh").read_text()
    assert '--server.address "$address"' in dev and "--browser.gatherUsageStats false" in dev
    assert 'if [ "${1:-}" = "--network" ]; then address=0.0.0.0' in dev
