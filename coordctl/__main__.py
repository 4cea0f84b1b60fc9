"""``python -m coordctl``: the same as the ``coordctl`` command."""

from coordctl.cli_base import main

if __name__ == "__main__":
    main()
