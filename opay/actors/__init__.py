"""Entity actors hosted by Ray shard actors, and the front end's batching router to them."""
