"""The `maemi` command. Thin: it parses arguments and calls into the packages that do the work.

Each command names the package that owns it; a command whose issue has not landed yet says so and exits with status 2.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

app = typer.Typer(
    name="maemi",
    help="MAEMI: a small, on-premises vision-language assistant for electron micrographs.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
data_app = typer.Typer(help="Inspect and split image datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data", help="Inspect and split image datasets (class folders or a CSV manifest).")


def _not_built(command: str, issue: int) -> None:
    typer.echo(f"maemi {command}: not built yet (tracked in issue #{issue}).", err=True)
    raise typer.Exit(2)


def _fail(message: str) -> None:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(1)


# ----------------------------------------------------------------------------------------------------- data (issue 2)


@app.command()
def synth(
    out: Path = typer.Argument(..., help="Folder to write the corpus into (OUT/<class>/<name>.png + metadata.jsonl)."),
    per_class: int = typer.Option(20, "--per-class", min=1, help="Images per class."),
    seed: int = typer.Option(0, "--seed", help="Random seed: same seed, same bytes."),
    classes: Optional[str] = typer.Option(None, "--classes", help="Comma-separated subset of the ten SEM classes."),
) -> None:
    """Synthesise the built-in corpus: SEM-like micrographs in ten classes with ground truth."""
    _not_built("synth", 2)


@data_app.command("inspect")
def data_inspect(
    root: Path = typer.Argument(..., help="Dataset folder (root/<class>/<image>) or a CSV manifest (path,label)."),
    as_json: bool = typer.Option(False, "--json", help="Print the report as JSON."),
) -> None:
    """Count images per class; list sizes, formats, bit depths, duplicates and unreadable files."""
    _not_built("data inspect", 2)


@data_app.command("split")
def data_split(
    root: Path = typer.Argument(..., help="Dataset folder or CSV manifest."),
    out: Path = typer.Option(..., "--out", help="Where to write the split (JSON)."),
    val: float = typer.Option(0.1, "--val", min=0.0, max=0.9, help="Fraction for validation."),
    test: float = typer.Option(0.2, "--test", min=0.0, max=0.9, help="Fraction for test."),
    seed: int = typer.Option(0, "--seed", help="Random seed."),
) -> None:
    """Deterministic stratified split; duplicates never straddle two splits."""
    _not_built("data split", 2)


# ------------------------------------------------------------------------------------------- later issues fill these


@app.command()
def teach() -> None:
    """Distil instruction data (JSONL) from a teacher: measured (offline) or an OpenAI-compatible endpoint."""
    _not_built("teach", 3)


@app.command()
def train() -> None:
    """Train MAEMI on instruction data (CPU, CUDA, or several processes with torchrun)."""
    _not_built("train", 5)


@app.command(name="eval")
def evaluate() -> None:
    """Evaluate a trained run: captioning/VQA metrics and zero-/few-shot classification."""
    _not_built("eval", 5)


@app.command()
def ask() -> None:
    """Ask a trained model a question about one or more micrographs."""
    _not_built("ask", 5)


@app.command()
def caption() -> None:
    """Caption micrographs with a trained model."""
    _not_built("caption", 5)


@app.command()
def classify() -> None:
    """Classify micrographs, zero-shot or few-shot with demonstrations picked by similarity."""
    _not_built("classify", 5)


@app.command()
def screen() -> None:
    """Screen a whole folder of micrographs in batches (classification, captions, measurements) to CSV/JSONL."""
    _not_built("screen", 7)


@app.command()
def serve() -> None:
    """Serve a trained model: local web page, HTTP API and an OpenAI-compatible endpoint."""
    _not_built("serve", 7)


@app.command()
def demo(
    out: Path = typer.Option(Path("maemi-demo"), "--out", help="Folder for everything the demo makes."),
    per_class: int = typer.Option(20, "--per-class", min=1, help="Synthetic images per class."),
    seed: int = typer.Option(0, "--seed"),
) -> None:
    """The main job end to end on the built-in synthetic corpus."""
    _not_built("demo", 5)


def main() -> None:  # pragma: no cover - console entry point
    app()


if __name__ == "__main__":  # pragma: no cover
    app()
