"""Every command in the README's ```bash / ```sh blocks works as written.

- ``python src/{train,eval,predict}.py ARGS`` (also behind ``torchrun``, ``sbatch scripts/slurm_train.sh`` and
  ``make train|eval ARGS="..."``) composes its config with ARGS, as ``--cfg job`` would: a config group, option or
  key that does not exist fails here. ``<run>``-style placeholders stand for any value.
- ``python scripts/X.py ARGS`` runs ``--help`` successfully, and every ``--option`` in ARGS is in that help.
- ``make TARGET`` names a Makefile target; the pinned ``pip install torch==...`` agrees with the Makefile.

A command of any other kind fails the test: teach it here when the README gains one.
"""

from __future__ import annotations

import re
import shlex
import subprocess
import sys
from functools import cache

import pytest

from helpers.config import ROOT, compose

README = ROOT / "README.md"
ENTRY_POINTS = {"src/train.py": "train", "src/eval.py": "eval", "src/predict.py": "predict"}
PYTHONS = ("python", "python3")


def readme_commands(text: str) -> list[str]:
    """The commands of the bash / sh blocks: continuation lines joined, ``a && b`` split, comments dropped."""
    commands = []
    for block in re.findall(r"^```(?:bash|sh)\n(.*?)^```", text, flags=re.M | re.S):
        for line in block.replace("\\\n", " ").splitlines():
            for part in re.split(r"\s&&\s", line):
                if shlex.split(part, comments=True):
                    commands.append(part.strip())
    return commands


def _placeholders(args: list[str]) -> list[str]:
    return [re.sub(r"<[^<>]+>", "X", a) for a in args]


def hydra_overrides(args: list[str]) -> list[str]:
    """Hydra's own flags (``--cfg job``, ``-m``) removed: what is left is the override list."""
    out, skip = [], False
    for a in args:
        if skip:
            skip = False
        elif a in ("--cfg", "-c", "--package", "-p"):
            skip = True
        elif a not in ("-m", "--multirun"):
            out.append(a)
    return _placeholders(out)


@cache
def script_help(script: str) -> str:
    result = subprocess.run([sys.executable, script, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"{script} --help failed:\n{result.stderr[-2000:]}"
    return result.stdout


def makefile_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text(encoding="utf-8")
    return set(re.findall(r"^([A-Za-z][\w-]*):", text, flags=re.M))


def check_entry_point(script: str, args: list[str]) -> None:
    compose(hydra_overrides(args), config_name=ENTRY_POINTS[script])  # raises on an unknown group/option/key


def check_command(command: str) -> None:
    argv = shlex.split(command, comments=True)
    if argv[0] in PYTHONS and len(argv) > 1 and argv[1] in ENTRY_POINTS:
        check_entry_point(argv[1], argv[2:])
    elif argv[0] in PYTHONS and len(argv) > 1 and re.fullmatch(r"scripts/\w+\.py", argv[1]):
        help_text = script_help(argv[1])
        options = [a.split("=")[0] for a in argv[2:] if a.startswith("--")]
        unknown = [o for o in options if not re.search(rf"(?<![\w-]){re.escape(o)}(?![\w-])", help_text)]
        assert not unknown, f"{argv[1]} has no option(s) {unknown}"
    elif argv[0] == "torchrun":
        script = next(a for a in argv if a in ENTRY_POINTS)
        check_entry_point(script, argv[argv.index(script) + 1 :])
    elif argv[:2] == ["sbatch", "scripts/slurm_train.sh"]:
        assert '"$@"' in (ROOT / "scripts/slurm_train.sh").read_text(encoding="utf-8")
        check_entry_point("src/train.py", argv[2:])
    elif argv[0] == "make":
        targets = [a for a in argv[1:] if "=" not in a]
        missing = set(targets) - makefile_targets()
        assert not missing, f"Makefile has no target(s) {sorted(missing)}"
        make_args = shlex.split(next((a.split("=", 1)[1] for a in argv[1:] if a.startswith("ARGS=")), ""))
        for target in targets:
            if target in ("train", "eval"):
                check_entry_point(f"src/{target}.py", make_args)
    elif argv[:3] == ["python3", "-m", "venv"] or argv[0] in (".", "source"):
        pass  # environment set-up
    elif argv[:2] == ["pip", "install"]:
        makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
        pins = [a for a in argv[2:] if "==" in a]
        assert all(p in makefile for p in pins), f"README pins {pins}, the Makefile installs otherwise"
    else:
        pytest.fail(f"tests/test_readme_commands.py does not know how to check: {command}")


COMMANDS = readme_commands(README.read_text(encoding="utf-8"))


def test_the_readme_has_the_commands_a_user_needs():
    firsts = {" ".join(shlex.split(c)[:2]) for c in COMMANDS}
    for needed in (
        "make train",
        "make test",
        "python src/train.py",
        "python src/eval.py",
        "python src/predict.py",
        "python scripts/export.py",
        "python scripts/dataset_report.py",
        "python scripts/browse_dataset.py",
    ):
        assert needed in firsts, f"README shows no `{needed}` command"


@pytest.mark.parametrize("command", COMMANDS, ids=[" ".join(shlex.split(c, comments=True))[:80] for c in COMMANDS])
def test_readme_command_works_as_written(command):
    check_command(command)


@pytest.mark.parametrize(
    "command",
    [
        "python src/train.py model=no_such_model",
        "python src/train.py model.no_such_key=1",
        "python src/eval.py ckpt_path=x.ckpt optimizer.lr_per_16_imgs=0.1",
        "python src/predict.py ckpt_path=x.ckpt input=a output=b inference=no_such_option",
        "make no-such-target",
        "python scripts/dataset_report.py --no-such-option 1",
        "python scripts/dataset_report.py --min 800",
        "cowsay hello",
    ],
)
def test_a_broken_command_fails(command):
    with pytest.raises(BaseException) as caught:
        check_command(command)
    assert caught.type is not KeyboardInterrupt
