"""Option parsing shared by the bench/ scripts."""

import click

import dnnlib


def positive_int_list(ctx, param, value):
    """click callback: '1,2,8-10' -> [1, 2, 8, 9, 10], all positive, or a one-line usage error."""
    try:
        values = dnnlib.util.parse_int_list(value)
    except ValueError as err:
        raise click.BadParameter(f'"{value}": {err}') from None
    if not values or min(values) < 1:
        raise click.BadParameter(f'"{value}" must list positive integers')
    return values
