"""Run cai from a checkout without installing it: ``python cli.py --help``."""

from cai.cli import main

main()
