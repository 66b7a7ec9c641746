"""Redis adapters: entity snapshots, indexes, due times, wallet addresses; and the embedded server."""
