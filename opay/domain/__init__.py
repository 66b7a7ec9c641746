"""Pure rules. Nothing here knows of Ray, Redis or HTTP."""
