"""The ``command`` action: run a program with placeholders as separate arguments, never through a shell.

``command: ["/usr/local/bin/notify", "{path}", "{class}"]`` or
``command: {args: [...], timeout: 60}``. A non-zero exit is a failed action
whose error ends with the last lines of the program's stderr.
"""

from __future__ import annotations

import os
import subprocess
from typing import Any

from rfwatch.plugin import FileContext, Options, Template, TemplateError, hookimpl


class CommandAction:
    def __init__(self, options: Any):
        opts = Options(
            options,
            short="args",
            known={"args", "timeout"},
            example='a list such as ["/usr/local/bin/notify", "{path}", "{class}"]',
        )
        args = opts.raw("args")
        if not isinstance(args, list) or not args or not all(isinstance(a, (str, int, float)) for a in args):
            raise ValueError(f"expected a non-empty list of arguments (no shell is used), got {args!r}")
        try:
            self.args = [Template(str(a)) for a in args]
        except TemplateError as exc:
            raise ValueError(str(exc)) from None
        self.timeout = opts.number("timeout", 60.0, positive=True, unit="seconds")

    def _argv(self, ctx: FileContext) -> list[str]:
        values = ctx.values()
        return [t.render(values) for t in self.args]

    def describe(self, ctx: FileContext) -> str:
        return " ".join(self._argv(ctx))

    def __call__(self, ctx: FileContext) -> dict[str, Any]:
        argv = self._argv(ctx)
        env = {k: v for k, v in os.environ.items() if k != "ROBOFLOW_API_KEY"}
        values = ctx.values()  # the matched class, as {class} gives it (multi-label: the class the rule matched)
        env.update(
            RFWATCH_PATH=str(ctx.path),
            RFWATCH_CLASS=str(values["class"]),
            RFWATCH_CONFIDENCE=f"{values['confidence']:.4f}",
            RFWATCH_RULE=ctx.rule or "",
        )
        try:
            # Run from the config's folder, so relative paths mean the same as everywhere else in it.
            proc = subprocess.run(
                argv,
                capture_output=True,
                timeout=self.timeout,
                env=env,
                stdin=subprocess.DEVNULL,
                cwd=ctx.config.base_dir,
            )
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"{argv[0]} timed out after {self.timeout:g}s") from None
        except OSError as exc:
            raise RuntimeError(f"cannot run {argv[0]}: {exc.strerror or exc}") from None
        if proc.returncode != 0:
            tail = proc.stderr.decode("utf-8", "replace").strip().splitlines()[-5:]
            raise RuntimeError(f"{argv[0]} exited with {proc.returncode}: " + " | ".join(tail))
        return {"exit": 0, "stdout": proc.stdout.decode("utf-8", "replace").strip()[-500:]}

    @staticmethod
    def undo(ctx: FileContext, result: Any) -> dict[str, Any]:
        return {"outcome": "nothing", "detail": "a command that ran cannot be reversed"}


@hookimpl
def register_actions(register):
    register("command", CommandAction)
