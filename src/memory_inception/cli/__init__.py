"""`mi`: the command line. Thin: each command module parses its arguments, calls the library and formats."""

import typer

from memory_inception.cli import bank_cmd, eval_cmd, generate_cmd, memory_cmd, serve_cmd, tuning_cmd

app = typer.Typer(help="Memory Inception: steer language models with text banks.", no_args_is_help=True)
bank_app = typer.Typer(help="Build and inspect banks.", no_args_is_help=True)
app.add_typer(bank_app, name="bank")
bank_app.command("build")(bank_cmd.bank_build)
bank_app.command("info")(bank_cmd.bank_info)
bank_app.command("quantize")(memory_cmd.bank_quantize)
memory_app = typer.Typer(help="Memory banks: long documents read top-k per query.", no_args_is_help=True)
app.add_typer(memory_app, name="memory")
memory_app.command("build")(memory_cmd.memory_build)
for command in (generate_cmd.models, generate_cmd.generate, generate_cmd.chat, generate_cmd.demo,
                tuning_cmd.select, tuning_cmd.calibrate, tuning_cmd.tune, serve_cmd.serve):
    app.command()(command)
app.command("eval")(eval_cmd.eval_)
app.command()(eval_cmd.report)

__all__ = ["app"]
