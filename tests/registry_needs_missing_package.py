import surely_not_installed_pkg  # noqa: F401  (tests: a registry target whose dependency is missing)
