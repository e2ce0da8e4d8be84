"""Service fixtures are plugins, one module per service (see STYLE.md §15)."""

pytest_plugins = [
    "tests.fix_db",
    "tests.fix_nats",
    "tests.fix_redis",
    "tests.fix_timescale",
    "tests.fix_access",
]
