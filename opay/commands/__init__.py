"""The operator's commands besides `opay serve`: each module is one subcommand of opay/cli.py."""
