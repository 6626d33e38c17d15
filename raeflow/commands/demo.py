"""`raeflow demo`: the whole flow on builtin data, local Ray."""

from __future__ import annotations

import click

from raeflow.commands.options import console_options
from raeflow.demo import DemoConfig


@click.command("demo")
@click.option(
    "--out",
    default="demo-out",
    show_default=True,
    metavar="DIR",
    help="Folder that receives every output of the flow.",
)
@click.option(
    "--epochs", default=3, show_default=True, type=int, help="Training epochs of the denoising model."
)
@click.option(
    "--train-images",
    default=4500,
    show_default=True,
    type=int,
    help="Digits used for training; the rest of the 5,000 are held out for denoising and the report.",
)
@click.option(
    "--noise",
    default="gaussian:0.5",
    show_default=True,
    metavar="SPEC",
    help="Noise the model learns to remove.",
)
@click.option(
    "--tsne/--no-tsne", default=True, show_default=True, help="Add a t-SNE map of the codes to the report."
)
@console_options
def demo(out: str, epochs: int, train_images: int, noise: str, tsne: bool) -> None:
    """Run the whole flow on builtin MNIST digits with an embedded local Ray.

    \b
    shard builtin:mnist -> train a denoising conv autoencoder (Ray Train) -> embed every digit
    (Ray Data) -> denoise a noisy copy of held-out digits -> reconstruction report (report.html).
    A few minutes on 2 cores; a rerun into the same --out resumes instead of starting over.
    """
    from raeflow.demo import run_demo

    run_demo(
        DemoConfig(out=out, epochs=epochs, train_images=train_images, noise=noise, tsne=tsne), echo=click.echo
    )


COMMANDS: list[click.Command] = [demo]
