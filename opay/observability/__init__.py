"""What an operator sees of the server: structured logs and Prometheus metrics."""
