"""`genlab rate`: blind pairwise preference between runs' samples, served as a local web page.

`samples` finds what each run wrote, `store` keeps judgements in SQLite, `app` is the page,
`command` the flags and the server (`genlab rate`), `stats` the win rates and Bradley–Terry
scores that `genlab compare --ratings` adds to its table.
"""

from launch.rate.command import add_rate_parser, run_rate

__all__ = ["add_rate_parser", "run_rate"]
