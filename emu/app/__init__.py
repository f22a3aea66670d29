"""The application: the `lpemu` command, the demo, reports (trace files and
timelines) and the benchmark table."""
