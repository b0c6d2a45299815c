"""The one validation helper of brlib's settings, for the layer, the schedule and the runner.

Every check raises ValueError with the argument's name, what is allowed and
what was given. Booleans and None never pass as numbers, so `True` cannot
stand in for 1.
"""

import numbers


def check_value(name, value, allowed, is_ok):
    """Raises a ValueError naming `name` and what is `allowed`, unless `is_ok(value)`."""
    if isinstance(value, bool) or value is None or not is_ok(value):
        raise ValueError(f"`{name}` must be {allowed}; got {name}={value!r}.")


def check_number(name, value, allowed="a number", is_ok=lambda v: True):
    """`check_value` for a real number (integers included)."""
    check_value(name, value, allowed, lambda v: isinstance(v, numbers.Real) and is_ok(v))


def check_integer(name, value, allowed="an integer", is_ok=lambda v: True):
    """`check_value` for an integer (Python or NumPy)."""
    check_value(name, value, allowed, lambda v: isinstance(v, numbers.Integral) and is_ok(v))
