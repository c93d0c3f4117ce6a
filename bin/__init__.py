"""Entry points: the `wadud` command and its roles."""
