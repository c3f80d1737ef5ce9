"""`xpud completion bash|zsh`: scripts made from the parser, completing commands, flags and choices in bash."""

from __future__ import annotations

import subprocess

from helpers import run_xpud


def complete(script: str, *words: str) -> list[str]:
    line = " ".join(words)
    cmd = f'{script}\nCOMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _xpud; printf "%s\\n" "${{COMPREPLY[@]}}"'
    return subprocess.run(["bash", "-c", cmd], capture_output=True, text=True, check=True).stdout.split()


def test_bash_completes_commands_flags_and_choices() -> None:
    result = run_xpud("completion", "bash")
    assert result.returncode == 0 and "complete -F _xpud xpud" in result.stdout
    script = result.stdout
    assert complete(script, "xpud", "dep") == ["deploy", "deployments"]
    assert complete(script, "xpud", "deploy", "web", "--max-u") == ["--max-unavailable"]
    assert complete(script, "xpud", "rollout", "")[0] == "status"
    assert "init" in complete(script, "xpud", "certs", "")
    assert complete(script, "xpud", "events", "--si") == ["--since"]


def test_zsh_script_and_a_bad_shell() -> None:
    result = run_xpud("completion", "zsh")
    assert result.returncode == 0 and result.stdout.startswith("#compdef xpud")
    assert "'rollback:return a deployment" in result.stdout and "--max-unavailable" in result.stdout
    bad = run_xpud("completion", "fish")
    assert bad.returncode == 2 and "invalid choice: 'fish'" in bad.stderr


def test_every_flag_and_argument_has_help() -> None:
    import argparse

    from xpud.cli import build_parser

    missing = []
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                missing += [f"{name} {a.option_strings or a.dest}" for a in sub._actions
                            if not a.help and not isinstance(a, argparse._SubParsersAction)]
    assert not missing, missing
