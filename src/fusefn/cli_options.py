"""Click options that several commands share, defined once so their names, defaults and help stay alike."""

from __future__ import annotations

import click

__all__ = ["bootstrap_options"]

_BOOTSTRAP = (
    click.option(
        "--ci",
        type=click.IntRange(min=0),
        default=10_000,
        show_default=True,
        help="Bootstrap resamples (0 = no intervals).",
    ),
    click.option("--seed", type=int, default=1234, show_default=True, help="Seed of the bootstrap resampling."),
    click.option("--level", type=click.FloatRange(0, 1, min_open=True, max_open=True), default=0.95, show_default=True),
    click.option(
        "--method",
        type=click.Choice(["auto", "percentile", "basic", "normal", "bca"]),
        default="auto",
        show_default=True,
        help="Interval method; auto: BCa for ECE and average precision (biased by resampling), percentile otherwise.",
    ),
    click.option("--threshold", type=float, default=None, help="Binary operating point [default: 0.5]."),
)


def bootstrap_options(command):
    """``--ci --seed --level --method --threshold``, in that order: the settings of ``fusefn analyze`` and ``compare``."""
    for option in reversed(_BOOTSTRAP):  # click applies decorators bottom-up
        command = option(command)
    return command
