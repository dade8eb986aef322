"""``python -m kiboauto`` is the ``kiboauto`` command."""

from kiboauto.cli import app

app(prog_name="kiboauto")
