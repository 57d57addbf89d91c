"""Option parsing shared by the bench/ scripts."""

import click

import dnnlib


def int_list(minimum):
    """click callback: '1,2,8-10' -> [1, 2, 8, 9, 10], each at least `minimum`, or a one-line usage error."""
    def parse(ctx, param, value):
        try:
            values = dnnlib.util.parse_int_list(value)
        except ValueError as err:
            raise click.BadParameter(f'"{value}": {err}') from None
        if not values or min(values) < minimum:
            raise click.BadParameter(f'"{value}" must list integers >= {minimum}')
        return values
    return parse


positive_int_list = int_list(1)
