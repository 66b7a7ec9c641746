"""The GNAP authorization server and the resource server's view of its tokens."""
