"""``python -m coordctl``: the same as the ``coordctl`` command."""

from coordctl.cli import main

if __name__ == "__main__":
    main()
