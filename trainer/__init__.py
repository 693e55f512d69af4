"""OmniOPD trainer (import name ``omniopd.trainer``)."""
