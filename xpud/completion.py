"""`xpud completion bash|zsh`: a shell completion script made from the CLI's own parser (commands, their flags,
and the choices of the arguments that have them), so it never falls behind the commands."""

from __future__ import annotations

import argparse
import shlex


def _commands(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def _words(parser: argparse.ArgumentParser) -> tuple[list[str], list[str]]:
    """A command's flags, and the choices of its positional arguments (`models push`, `tokens create`, ...)."""
    flags: list[str] = []
    choices: list[str] = []
    for action in parser._actions:
        if action.option_strings:
            flags += [o for o in action.option_strings if o.startswith("--")]
        elif action.choices:  # an argument's choices, or a command's own commands (`certs init`)
            choices += [str(c) for c in action.choices]
    return sorted(set(flags)), choices


def bash(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    cases = []
    for name, sub in sorted(commands.items()):
        flags, choices = _words(sub)
        cases.append(f"        {name}) words={shlex.quote(' '.join([*choices, *flags]))} ;;")
    top = " ".join(sorted(commands))
    return "\n".join([
        "# xpud completion for bash: eval \"$(xpud completion bash)\" (or save it under bash-completion's dir)",
        "_xpud() {",
        "    local cur=\"${COMP_WORDS[COMP_CWORD]}\" command=\"\" words=\"\" i",
        "    for ((i = 1; i < COMP_CWORD; i++)); do",
        "        case \"${COMP_WORDS[i]}\" in -*) ;; *) command=\"${COMP_WORDS[i]}\"; break ;; esac",
        "    done",
        "    if [[ -z \"$command\" ]]; then",
        f"        COMPREPLY=($(compgen -W \"{top} --help --version --verbose\" -- \"$cur\"))",
        "        return",
        "    fi",
        "    case \"$command\" in",
        *cases,
        "    esac",
        "    if [[ \"$cur\" == -* || -n \"$words\" ]]; then",
        "        COMPREPLY=($(compgen -W \"$words --help\" -- \"$cur\"))",
        "    fi",
        "    [[ ${#COMPREPLY[@]} -eq 0 ]] && COMPREPLY=($(compgen -f -- \"$cur\"))",
        "}",
        "complete -F _xpud xpud",
        "",
    ])


def zsh(parser: argparse.ArgumentParser) -> str:
    commands = _commands(parser)
    described = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            described = [f"{n}:{helps.get(n, '')}".replace("'", "'\\''") for n in sorted(commands)]
    cases = []
    for name, sub in sorted(commands.items()):
        flags, choices = _words(sub)
        cases.append(f"    {name}) compadd -- {' '.join(shlex.quote(w) for w in [*choices, *flags])} ;;")
    return "\n".join([
        "#compdef xpud",
        "# xpud completion for zsh: xpud completion zsh > \"${fpath[1]}/_xpud\" (or eval it after compinit)",
        "_xpud() {",
        "  if (( CURRENT == 2 )); then",
        "    local -a commands",
        "    commands=(" + " ".join(f"'{d}'" for d in described) + ")",
        "    _describe 'command' commands",
        "    return",
        "  fi",
        "  case \"${words[2]}\" in",
        *cases,
        "  esac",
        "  _files",
        "}",
        "if [[ \"${funcstack[1]}\" == _xpud ]]; then _xpud \"$@\"; else compdef _xpud xpud; fi",
        "",
    ])


def script(parser: argparse.ArgumentParser, shell: str) -> str:
    return bash(parser) if shell == "bash" else zsh(parser)
