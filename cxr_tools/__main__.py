"""``python -m cxr_tools`` runs the ``cxr`` command."""

from cxr_tools.cli.app import main

if __name__ == "__main__":
    main()
