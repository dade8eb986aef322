"""Example protocols (YAML), installed as package data for `kiboauto demo`."""
