"""opay: an Open Payments server for account servicing entities."""
