"""opay as an Open Payments client of other servers: its own identity, remote receivers."""
