"""One thin command-line program per DVC stage (`python -m stages.<name>`)."""
