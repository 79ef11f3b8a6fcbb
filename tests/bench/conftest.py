"""The benchmark is a program, not tests: keep pytest out of this folder."""

collect_ignore_glob = ["*.py"]
